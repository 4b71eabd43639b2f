"""Trust and privacy: managed keys, consent, data subject requests, suppression, audit.

The durable records (keys, the suppression list, the audit log) live behind one
small port, :mod:`tessera.privacy.records`, with a SQLite and a PostgreSQL
backend chosen by the store URL, so they sit beside the profiles they protect.
"""
