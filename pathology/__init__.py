"""Whole-slide images: ingest, validation, storage, tiles, the viewer, annotations, consults and reports."""
