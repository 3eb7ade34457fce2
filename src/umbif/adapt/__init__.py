"""Adapting a pretrained encoder to the glioma tasks: embeddings (`embed`), linear probes (`probe`),
fine-tuning (`finetune`, on the loop of ``umbif.train.supervised``) and classifier folders (`classifier`)."""
