"""MaMI's applications: history-augmented diagnosis (history) and privacy protection (privacy)."""
