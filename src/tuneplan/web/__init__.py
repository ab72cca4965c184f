"""`tuneplan serve`: a local web page and JSON API over the same core as the CLI (extra: web).

The Starlette app lives in tuneplan.web.app and is imported only when `serve` runs (or a
test asks for it); importing this package imports nothing else. The page's files
(HTML, CSS, JS, no framework, no CDN) are shipped in tuneplan/web/static/.
"""
