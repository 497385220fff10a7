"""The data model: scenes and cameras, Gaussian clouds and their PLY/splat files. Imports only cos3d.core."""
