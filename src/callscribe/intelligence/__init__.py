"""Real-time intelligence on transcripts: redaction, phrase triggers, end-of-call notes."""
