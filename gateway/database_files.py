"""Which files in a tenant's data folder are databases: the gateway serves them, the importer
writes them. Imports nothing: the importer runs it in the tenant's sandbox."""

DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
