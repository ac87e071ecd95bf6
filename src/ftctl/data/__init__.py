"""Datasets in the ultrachat_200k chat format: validation, preparation, the shipped sample.

Kept import-light: the submodules import `datasets`/pyarrow lazily, inside functions.
"""
