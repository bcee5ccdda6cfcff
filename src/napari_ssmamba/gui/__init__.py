"""napari glue: readers, writers, sample data and widgets. The only package that imports napari or Qt."""
