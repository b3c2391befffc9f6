"""The live dashboard the HTTP side serves at / and /dashboard: one page, with its style and script
inline, that polls /dashboard.json (proxy.admin.dashboardview) every two seconds and draws its charts
as inline SVG with a few lines of its own. Nothing is fetched from anywhere but the page's own origin
(no CDN, no web font), so it works on an isolated network and leaks nothing; when the proxy stops
answering, a banner says since when and every figure is greyed, rather than the page freezing silently.

Sizes are in rem and the root font grows with the window, so the same grid reads on a laptop
(1366x768) and on a wall screen (2560x1440).

Clicking a row of the latest discrepancies (or its key) asks /discrepancies.json?key=K for that key's
triage records and shows them under the table until closed: they are read from every worker's log,
so only on demand, not on every poll. The comparison-rules panel appears only when the flag file has
rules, and an expired one is shown in red with its owner, who should remove it.

The page is written in its own languages beside this module: dashboard.html (the panels),
dashboard.css and dashboard.js (the polling and the drawing), joined once, at import, into the one
document served.
"""

from importlib import resources

_HERE = resources.files(__package__)


def _part(name: str) -> str:
    return _HERE.joinpath(name).read_text(encoding="utf-8")


DASHBOARD = ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
             '<meta name="viewport" content="width=device-width,initial-scale=1"><title>turnout</title>'
             f"<style>\n{_part('dashboard.css')}</style></head><body>\n{_part('dashboard.html')}"
             f"<script>\n{_part('dashboard.js')}</script></body></html>\n")
