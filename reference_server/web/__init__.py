"""Web access to the mailboxes: a small webmail page and a JSON API over HTTP(S).

See docs/web.md. :class:`~.listener.HttpListener` is the listener kind
``http``; :mod:`.app` has the routes, :mod:`.sessions` and :mod:`.csrf` the
security, :mod:`.mail` the store access scoped to the logged-in user,
:mod:`.render` the MIME view and HTML sanitising, :mod:`.compose` sending.
"""
