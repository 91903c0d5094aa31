"""Fine-tuning: file validation, and the trainers (``local`` LoRA on the embedded model, ``openai``)."""
