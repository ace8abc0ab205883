"""`/-/upload` on tenant hosts: the page where members pick CSV files, and the endpoint that
streams one file into the tenant's importer (gateway.importer), which runs as the tenant, sandboxed.

    client --multipart/form-data--> FormParser: parts as they arrive
                                      |-- the file's bytes ------------> importer stdin
                                      |<-- progress, staged, done ------ importer stdout
                                      \\-- the form's choices, at end --> importer fd 3 (commit)

Nothing is held whole: uvicorn hands over ~64 KB at a time and each piece waits until the
importer has taken it, so backpressure reaches the client through TCP. The gateway never opens
a tenant's file: it picks the database file name and the importer, as the tenant, writes it.
If the upload fails or the client goes away, fd 3 closes without an instruction and nothing is
written. A new database file is served after a hot swap of the tenant (Gateway.restart_tenant).

Answers are JSON. A client that accepts application/x-ndjson (the page does) gets, once the
upload is in, one JSON line per step: progress (rows so far), then done or error.

    endpoint.py          Uploads: the page, the script, and the POST that runs one import
    request.py           multipart/form-data as it arrives, and the headers an upload needs (pure)
    form.py              the form's fields -> where the file goes, importer options (pure)
    importer_process.py  Importer: one importer process, seen from the gateway (I/O)
    errors.py            the answers an upload gets instead of a table
"""
