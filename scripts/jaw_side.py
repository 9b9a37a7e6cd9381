"""jaw_side.py EVAL_DIR: signed error of the jaw points along the face's horizontal axis, near vs far
side of turned faces (is the model's far-side jaw inside dlib's silhouette, i.e. the 3D convention?)."""
import sys
from pathlib import Path

import numpy as np

d = Path(sys.argv[1])
z = np.load(d / 'predictions.npz')
p, g = z['all.pred'], z['all.gt']
iod = np.linalg.norm(g[:, 36] - g[:, 45], axis=1)
ex = (g[:, 45] - g[:, 36]) / iod[:, None]  # face's x axis (left to right eye corner)
t = ((g[:, 30, 0] - g[:, 36, 0]) / (g[:, 45, 0] - g[:, 36, 0])) - 0.5   # >0: nose towards image right
err = np.einsum('fpk,fk->fp', p - g, ex) / iod[:, None] * 100   # signed x error, % of iod
left, right = list(range(0, 7)), list(range(10, 17))           # image-left jaw, image-right jaw
for name, mask in [('turned, nose right (t>0.1)', t > 0.1), ('turned, nose left (t<-0.1)', t < -0.1),
                   ('near-frontal', np.abs(t) <= 0.1)]:
    if not mask.any():
        continue
    print(f'{name:28s} n={mask.sum():2d}  left-jaw dx {err[mask][:, left].mean():+.2f}  right-jaw dx '
          f'{err[mask][:, right].mean():+.2f}  (% iod; + = to image right)')
# far side = the side the nose turns towards; inward = towards the face centre
far = np.where(t[:, None] > 0, err[:, right], -err[:, left])   # + = far jaw predicted further out
near = np.where(t[:, None] > 0, -err[:, left], err[:, right])
m = np.abs(t) > 0.1
print(f'turned faces: far-side jaw outward error {far[m].mean():+.2f} % iod '
      f'(per face sd {far[m].mean(1).std():.2f}), near-side {near[m].mean():+.2f}')
