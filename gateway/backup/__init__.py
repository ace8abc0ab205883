"""Continuous replication of every database to S3-compatible object storage, and restores.

    litestream.py  Litestream's config, command line and environment (pure)
    catalog.py     state/backup.db: what is replicated where, and the files a restore needs
    replicator.py  one supervised Litestream process per tenant and one for state/
    progress.py    what each Litestream's log says: lag, failed syncs, the events about them
    s3.py          deleting a removed tenant's replica folder (Litestream cannot)
    restore.py     `gateway backup status`, `gateway restore`: reading the replicas back

Litestream (https://litestream.io) does the replication: it follows each database's
write-ahead log and sends new transactions to the bucket every `backup.sync_interval_s`.
"""

from .replicator import Replication

__all__ = ["Replication"]
