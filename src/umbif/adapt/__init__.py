"""Adapting a pretrained encoder to the glioma tasks: embeddings, linear probes, classifier folders."""
