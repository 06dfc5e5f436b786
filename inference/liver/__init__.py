"""Liver segmentation (issue 5): liver and tumours from multi-phase DCE-MRI or portal-venous CT.

The phantom simulator (:mod:`inference.liver.phantom`) provides training and
test data with known truth; the models, pre/post-processing and the
``liver-segmentation`` pipeline live beside it. Research use only; not a
medical device.
"""
