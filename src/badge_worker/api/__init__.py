"""The read side: `badge-worker api` (CONTRACT.md section 6)."""
