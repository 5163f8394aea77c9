"""Images and displacement fields in physical space (nibabel, pillow).

    img = fastreg.io.load("fixed.nii.gz")              # Image: data (C, *S), affine (RAS mm)
    moving = fastreg.io.resample("moving.nii.gz", img)  # on the fixed grid, through the affines
    fastreg.io.save("warped.nii.gz", warped, like=img)
    fastreg.io.save_field("disp.nii.gz", disp, img, format="itk")   # for ANTs / SimpleITK
    warped = fastreg.io.apply_field("moving.nii.gz", disp, img)      # one interpolation, any grid

Formats and axis conventions: `fastreg.io.image`; resampling and orientation:
`fastreg.io.space`; field files (Learn2Reg voxel, RAS-mm world, ITK/ANTs): `fastreg.io.fields`.
Bad files (missing, unreadable, truncated, unknown extension, wrong dimensionality) raise a
ValueError naming the file and what was expected; saves never leave a partial file.
"""
from fastreg.io.fields import load_field, save_field
from fastreg.io.image import Image, load, save
from fastreg.io.space import apply_field, reorient, resample

__all__ = ["Image", "load", "save", "resample", "reorient", "apply_field", "save_field", "load_field"]
