"""Names and addresses: every spelling of a host, address and port reduced to one canonical form, and the
resolver whose answers are what is both checked and dialled."""
