"""Interchange with the ecosystem: PEFT adapters (`peft`) and Hugging Face's Trainer (`trainer`)."""
