"""Haar cascade -> landmark box transforms per layout, fitted on synthetic faces.

Written by ``scripts/calibrate_haar.py`` (do not edit by hand; run the tool again).  A transform maps a
cascade box of side ``s`` and centre ``c`` to the square of side ``scale * s`` centred at
``c + (dx, dy) * s`` (:class:`kdlandmark.infer.detect.BoxTransform`).

These values were fitted (by the same code, then ``kdlandmark.infer.detect.calibrate_haar_on_synthetic``)
on an earlier version of the synthetic renderer; the held-out figures are those docs/INFERENCE.md
reports.  Run on today's renderer the tool finds 300W scale 0.943, dx -0.004, dy +0.180 and detects 55 %
of the held-out faces: regenerating the constants changes the Haar boxes slightly (docs/INFERENCE.md).
"""

#: How the constants were fitted (cascade parameters, faces, seed, OpenCV).
SETUP = {
    "cascade": "haarcascade_frontalface_default.xml",
    "scale_factor": 1.1,
    "min_neighbors": 3,
    "min_size": 0.08,
    "image_size": 256,
    "fit_faces": 1500,
    "held_out_faces": 500,
    "seed": 0,
    "opencv": "4.14.0"
}

#: layout -> {scale, dx, dy}.
HAAR_BOX_TRANSFORMS = {
    "300w": {
        "scale": 0.952,
        "dx": -0.0076,
        "dy": 0.1803
    },
    "wflw": {
        "scale": 0.9529,
        "dx": -0.0081,
        "dy": 0.1809
    },
    "cofw": {
        "scale": 0.9147,
        "dx": -0.0046,
        "dy": 0.1801
    }
}

#: Residuals of the fitted transforms on the held-out faces (as docs/INFERENCE.md reports them).
HELD_OUT = {
    "300w": {
        "images": 500,
        "detected": 221,
        "centre_error_median": 0.087,
        "centre_error_p90": 0.172,
        "side_ratio_p10": 0.85,
        "side_ratio_p90": 1.12,
        "iou_median": 0.77
    },
    "wflw": {
        "images": 500,
        "detected": 221,
        "centre_error_median": 0.087,
        "centre_error_p90": 0.172,
        "side_ratio_p10": 0.85,
        "side_ratio_p90": 1.12,
        "iou_median": 0.77
    },
    "cofw": {
        "images": 500,
        "detected": 221,
        "centre_error_median": 0.056,
        "centre_error_p90": 0.116,
        "side_ratio_p10": 0.83,
        "side_ratio_p90": 1.14,
        "iou_median": 0.81
    }
}
