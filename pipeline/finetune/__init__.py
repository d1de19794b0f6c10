"""pipeline/finetune."""
