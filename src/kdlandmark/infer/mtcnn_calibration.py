"""MTCNN -> landmark box transforms per layout and the score threshold, fitted on real faces.

Written by ``scripts/calibrate_mtcnn.py`` (do not edit by hand; run the tool again).  Fitted on the
photos of the training pool of ``../shared/realfaces``; the development photos are only measured
(``DEVELOPMENT``).  A transform maps an MTCNN box of side ``s`` and centre ``c`` to the square of
side ``scale * s`` centred at ``c + (dx, dy) * s`` (:class:`kdlandmark.infer.detect.BoxTransform`).
"""

#: What was fitted on (photos, MTCNN settings, OpenCV).
SETUP = {
    "fit_photos": [
        "Tom_Cruise_avp_2014_4.jpg",
        "bald_guys.jpg"
    ],
    "scores_tried": [
        0.7,
        0.8,
        0.9,
        0.95
    ],
    "min_face": 20,
    "thresholds": [
        0.6,
        0.7,
        0.7
    ],
    "opencv": "4.14.0"
}

#: O-Net face probability a detection needs.
MTCNN_MIN_SCORE = 0.8

#: layout -> {scale, dx, dy}.
MTCNN_BOX_TRANSFORMS = {
    "300w": {
        "scale": 0.765,
        "dx": 0.0149,
        "dy": 0.1667
    },
    "wflw": {
        "scale": 0.765,
        "dx": 0.0149,
        "dy": 0.1667
    },
    "cofw": {
        "scale": 0.7553,
        "dx": 0.0154,
        "dy": 0.1667
    }
}

#: Residuals on the faces fitted on.
FIT = {
    "images": 2,
    "faces": 25,
    "detected": 25,
    "detection_rate": 1.0,
    "centre_error_median": 0.0295,
    "centre_error_p90": 0.061,
    "side_ratio_abs_log_median": 0.0389,
    "side_ratio_p10": 0.957,
    "side_ratio_p90": 1.061,
    "iou_median": 0.8969,
    "found": 25,
    "false_positives": 0,
    "photos": 2
}

#: Measured (never fitted) on the development photos: faces found, false positives, residuals.
DEVELOPMENT = {
    "images": 9,
    "faces": 43,
    "detected": 42,
    "detection_rate": 0.9767,
    "centre_error_median": 0.0425,
    "centre_error_p90": 0.0781,
    "side_ratio_abs_log_median": 0.063,
    "side_ratio_p10": 0.8796,
    "side_ratio_p90": 0.9922,
    "iou_median": 0.8465,
    "found": 42,
    "false_positives": 0,
    "photos": 9,
    "false_positives_per_photo": 0.0
}
