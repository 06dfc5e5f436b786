"""DSC-MRI perfusion: simulation, signal conversion, AIF selection, SVD deconvolution and stroke lesion volumes.

Arrays are time-first, ``(t, z, y, x)`` like :class:`dicom_io.volume.DynamicVolume`.
Research use only; not a medical device.
"""
