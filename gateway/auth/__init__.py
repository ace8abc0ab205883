"""Shared login: one account system on the apex domain, used by every tenant.

    store.py      the accounts database (SQLite in the state folder): users, memberships,
                  sessions, API tokens, invitations, sign-in tickets (in a cluster, a replica:
                  cluster/accounts.py)
    passwords.py  argon2id hashing, password and email rules
    throttle.py   sign-in back-off per account and per client address (pure; in a cluster,
                  cluster/throttle.py)
    csrf.py       tokens for the gateway's forms (pure)
    cookies.py    the cookies the gateway owns (pure)
    urls.py       the open-redirect check and the URLs the pages build (pure)
    actor.py      Datasette's ds_actor cookie, minted per tenant (pure)
    service.py    Auth: the request path's identity check (cached), sign-in, sign-out, hand-off
    web.py        the pages: sign-in, sign-out, accept-invite on the apex; /-/logout and the
                  hand-off on tenant hosts
    accounts.py   what the CLI does: add users, invite, tokens, memberships
"""
