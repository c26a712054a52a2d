"""Storage of events: the event, the journal, the ledger and its migrations, the recorder."""
