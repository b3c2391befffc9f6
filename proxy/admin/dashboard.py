"""The live dashboard the HTTP side serves at / and /dashboard: one page that polls /status.json and
/discrepancies.json every two seconds (no build step, nothing to install)."""

DASHBOARD = """<!doctype html>
<html><head><meta charset="utf-8"><title>turnout</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}td,th{padding:2px 10px;text-align:left}
.bad{color:#b00}.ok{color:#070}pre{background:#f4f4f4;padding:8px}</style></head>
<body><h1>turnout</h1><div id="status">loading...</div>
<script>
async function refresh() {
  const s = await (await fetch('/status.json')).json();
  const d = await (await fetch('/discrepancies.json')).json();
  const rows = (s.backends || []).map(b => `<tr><td>${b.name}</td><td>${b.type}</td>` +
    `<td class="${b.healthy ? 'ok' : 'bad'}">${b.healthy ? 'healthy' : 'FAILING ' + b.error}</td></tr>`).join('');
  document.getElementById('status').innerHTML =
    `<p>flags revision <b>${s.reload.revision}</b>${s.reload.last_error ? ' <span class="bad">last reload failed: ' +
      s.reload.last_error + '</span>' : ''}</p>` +
    `<p>override: ${s.override.active ? '<b class="bad">everything to ' + s.override.route + '</b> (' +
      s.override.reason + ')' : 'none'}</p>` +
    `<p>replication: ${s.replication.depth} pending, oldest ${s.replication.oldest_age_seconds.toFixed(1)} s</p>` +
    `<table><tr><th>backend</th><th>type</th><th>health</th></tr>${rows}</table>` +
    `<p>discrepancies: ${d.total || 0} of ${d.compared || 0} compared (rate ${(d.rate || 0).toFixed(4)})</p>` +
    `<pre>${JSON.stringify(d.by_kind || {}, null, 1)}</pre><pre>${JSON.stringify(s.flags, null, 1)}</pre>`;
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
