"""Relays from services' PostgreSQL databases to Tessera: the transactional outbox and CDC."""
