"""Input and output: datasets, metadata, array settings, output folders and checkpoints,
NeXus export, compression."""
