"""What keeps every accepted write until the database has it: the journal (one line
codec and its lookups), the spool, and the committer."""
