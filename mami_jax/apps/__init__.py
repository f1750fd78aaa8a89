"""Applications: history-augmented diagnosis and privacy protection."""
