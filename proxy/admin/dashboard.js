'use strict';
const POLL_MS = 2000, TIMEOUT_MS = 3000;
const COLORS = {old: '#58a6ff', new: '#f0883e', p50: '#3fb950', p95: '#d29922', p99: '#f85149',
  rate: '#f0883e', bound: '#f85149', depth: '#58a6ff'};
let downSince = null, picked = null;
const $ = id => document.getElementById(id);
const esc = v => String(v ?? '').replace(/[&<>"']/g,
  c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const clock = t => new Date(t * 1000).toLocaleTimeString([], {hour12: false});
const pct = (v, digits = 2) => (100 * (v || 0)).toFixed(digits) + ' %';
const num = (v, digits = 1) => Number(v || 0).toFixed(digits);
const ms = v => (1000 * (v || 0)).toFixed(1) + ' ms';
const set = (id, html) => { $(id).innerHTML = html; };
const high = values => values.reduce((a, b) => Math.max(a, b), 0);

// One chart: lines over time in an SVG sized to its box, with three grid lines and their values.
function chart(id, times, lines, fmt, end) {
  const svg = $(id), w = svg.clientWidth || 600, h = svg.clientHeight || 150;
  // The margins hold the axis labels (0.7rem), and the root font grows with the window.
  const label = 0.7 * parseFloat(getComputedStyle(document.documentElement).fontSize);
  const left = Math.round(label * 6) + 6, right = 8, top = Math.round(label * 0.7), bottom = Math.round(label * 1.6);
  const span = Math.min(1800, Math.max(120, times.length ? end - times[0] : 120));
  const start = end - span;
  let high = 0;
  for (const l of lines) for (const v of l.values) high = Math.max(high, v);
  high = high > 0 ? high * 1.15 : 1;
  const x = t => left + (w - left - right) * (t - start) / span;
  const y = v => top + (h - top - bottom) * (1 - v / high);
  let out = '';
  for (const f of [0, 0.5, 1]) {
    const v = high * f, yy = y(v).toFixed(1);
    out += `<line class="grid" x1="${left}" x2="${w - right}" y1="${yy}" y2="${yy}"/>` +
      `<text x="${left - 4}" y="${yy}" text-anchor="end" dominant-baseline="middle">${esc(fmt(v))}</text>`;
  }
  out += `<text x="${left}" y="${h - 3}">${clock(start)}</text>` +
    `<text x="${w - right}" y="${h - 3}" text-anchor="end">${clock(end)}</text>`;
  for (const l of lines) {
    if (!l.values.length) continue;
    const d = l.values.map((v, i) => `${i ? 'L' : 'M'}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    out += `<path class="series" data-name="${esc(l.name)}" d="${d}" stroke="${l.color}"` +
      `${l.dash ? ' stroke-dasharray="5 4"' : ''}/>`;
  }
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.innerHTML = out;
  const legend = $(id + '-legend');
  if (legend) legend.innerHTML = lines.map(l => `<span><i style="background:${l.color}"></i>${esc(l.name)}</span>`)
    .join('') + `<span>last ${Math.round(span / 60)} min</span>`;
}

function phase(d) {
  const p = d.phase;
  $('phase').className = p.name === 'rolled_back' ? 'bad' : p.name === 'cut_over' ? 'ok' : '';
  set('phase', esc(p.text));
  set('revision', 'flags ' + esc(d.revision || '(none)') + ' · turnout ' + esc(d.version));
}

function traffic(d) {
  set('read-pct', num(d.traffic.read, 0) + '<span class="unit"> %</span>');
  set('write-pct', num(d.traffic.write, 0) + '<span class="unit"> %</span>');
  const c = d.canary;
  set('canary', c.active ? `step ${c.step + 1} of ${c.steps.length} at <b>${num(c.percentage, 0)} %</b> · ` +
    `<span class="${c.state === 'rolled_back' ? 'bad' : c.state === 'holding' ? 'warn' : 'ok'}">` +
    `${esc(c.state)}</span>` +
    (c.reason ? ` <span class="dim">${esc(c.reason)}</span>` : '') : '<span class="dim">no canary</span>');
  set('modes', `use_new_storage <b>${d.traffic.use_new_storage}</b> · shadow <b>${d.traffic.shadow_mode_enabled}</b>` +
    (d.override.active ? ` · <span class="bad">override: everything to ${esc(d.override.route)}</span>` : ''));
}

function figures(d) {
  const n = d.now, s = d.series;
  set('calls-now', num(n.calls_per_second) + '<span class="unit"> calls/s</span>');
  set('calls-routes', Object.entries(n.by_route).map(([r, v]) => `${esc(r)} ${num(v)}/s`).join(' · '));
  const end = d.time;
  chart('chart-calls', s.time, ['old', 'new'].map(b => ({name: 'served by ' + b, color: COLORS[b],
    values: s.calls_per_second[b]})), v => num(v) + '/s', end);
  chart('chart-errors', s.time, ['old', 'new'].map(b => ({name: b, color: COLORS[b], values: s.error_rate[b]})),
    v => pct(v, 1), end);
  for (const b of ['old', 'new']) {
    chart('chart-latency-' + b, s.time, ['p50', 'p95', 'p99'].map(q => ({name: q, color: COLORS[q],
      values: s.latency[b][q]})), ms, end);
    const f = n.backends[b] || {};
    set('latency-' + b, `p50 ${ms(f.p50)} · p95 ${ms(f.p95)} · p99 <b>${ms(f.p99)}</b> · errors ${pct(f.error_rate)}`);
  }
  chart('chart-discrepancies', s.time, [{name: 'rate', color: COLORS.rate, values: s.discrepancy_rate},
    {name: '95 % upper bound', color: COLORS.bound, values: s.discrepancy_bound, dash: true}], v => pct(v, 2), end);
  chart('chart-replication', s.time, [{name: 'depth', color: COLORS.depth, values: s.replication_depth}],
    v => num(v, high(s.replication_depth) < 10 ? 1 : 0), end);
}

function discrepancies(d) {
  const x = d.discrepancies, w = x.window || {};
  set('disc-rate', pct(w.rate, 3) + `<span class="unit"> \u2264 ${pct(w.bound_high, 3)} (95 %)</span>`);
  set('disc-totals', `${x.total} of ${x.compared} compared since start · in the window ` +
    `${w.discrepancies || 0} of ${w.compared || 0}` +
    (Object.keys(x.by_kind).length
      ? ' · ' + Object.entries(x.by_kind).map(([k, n]) => `${esc(k)} ${n}`).join(', ') : ''));
  const rows = x.latest.map(s => `<tr data-key="${esc(s.key)}"${s.key === picked ? ' class="picked"' : ''}>` +
    `<td>${clock(s.time)}</td><td><a class="key" href="#" data-key="${esc(s.key)}">${esc(s.key)}</a></td>` +
    `<td>${esc(s.kind)}</td>` +
    `<td>${esc(s.op)}</td><td>${'primary' in s ? esc(s.primary) + ' / ' + esc(s.shadow)
      : esc((s.paths || []).join(', ') || s.detail)}</td></tr>`).join('');
  set('latest', rows || '<tr><td colspan="5" class="dim">none</td></tr>');
}

function replication(d) {
  const r = d.replication;
  set('repl-depth', num(r.depth, 0) + '<span class="unit"> queued</span>');
  set('repl-age', `oldest ${num(r.oldest_age_seconds)} s · replayed ${r.replayed} · failures ${r.failures}` +
    (r.last_error ? ` <span class="bad">${esc(r.last_error)}</span>` : ''));
}

function progress(run, fallback) {
  if (!run) return fallback;
  const share = run.total ? Math.min(1, run.done / run.total) : null;
  const state = run.running ? 'running' : run.error ? `<span class="bad">failed: ${esc(run.error)}</span>` : 'done';
  return `${state} · ${run.done}${run.total ? ' of ' + run.total : ''} keys` +
    (share === null ? '' : ` (${(100 * share).toFixed(1)} %)<div class="bar"><div style="width:${100 * share}%">` +
      '</div></div>') + ` <span class="dim">started ${clock(run.started_unix)}</span>`;
}

function jobs(d) {
  const m = d.jobs.migrate, v = d.jobs.verify, c = m.checkpoint;
  set('migrate', progress(m.run, c ? `${c.complete ? '<span class="ok">complete</span>' : 'interrupted'} · ` +
    `${c.migrated ?? '?'} migrated, ${c.errors ?? 0} errors` : '<span class="dim">never run</span>'));
  const last = v.last;
  set('verify', progress(v.run, last ? `<span class="${last.clean ? 'ok' : 'bad'}">${last.clean ? 'clean' :
    `${last.missing} missing, ${last.different} different, ${last.extra} extra`}</span> · ` +
    `${num(last.age_seconds / 60, 0)} min ago` : '<span class="dim">never run</span>'));
}

function rollbacks(d) {
  const r = d.rollbacks;
  set('rollbacks-count', `${r.count}<span class="unit"> (${r.automatic} automatic)</span>`);
  const t = r.trigger, last = r.last;
  set('rollbacks-last', (t ? `<div class="bad">tripped: ${esc(t.name)} measured ${Number(t.measured).toPrecision(3)}` +
    ` vs threshold ${t.threshold} · ${esc(t.detail)}</div>` : '') +
    (last && last.time_unix ? `<div>last ${clock(last.time_unix)} ${last.automatic ? 'automatic' : 'operator'}: ` +
      `${esc(last.reason)} <span class="${last.ok ? 'ok' : 'bad'}">${last.ok ? 'ok' : 'incomplete'}</span></div>`
      : '') +
    r.by_trigger.map(b => `<div class="dim">${b.automatic ? 'automatic' : 'manual'} ${esc(b.trigger)}: ` +
      `${b.count}</div>`)
      .join(''));
}

function health(d) {
  const h = d.health;
  set('serving', h.serving ? '<span class="ok">serving</span>' : '<span class="bad">not serving</span>');
  set('backends', h.backends.map(b => `<tr><td>${esc(b.name)}</td><td>${esc(b.type)}</td><td class="` +
    `${b.healthy ? 'ok">healthy' : 'bad">failing ' + esc(b.error)}</td></tr>`).join(''));
  const workers = h.workers.length;
  set('workers', workers ? `${h.workers.filter(w => w.reachable).length} of ${workers} workers answering` +
    h.workers.filter(w => !w.reachable).map(w => ` <span class="bad">worker ${w.index}: ${esc(w.error)}</span>`)
      .join('') : 'one process');
  const e = h.evaluation || {};
  set('verdicts', (e.triggers || []).map(t => `<tr><td>${esc(t.name)}</td><td class="` +
    `${t.verdict === 'ok' ? 'ok' : t.verdict === 'tripped' ? 'bad' : 'warn'}">${esc(t.verdict)}</td>` +
    `<td>${t.measured === null ? '\u2013' : Number(t.measured).toPrecision(3)} vs ${t.threshold}</td></tr>`).join('') ||
    '<tr><td class="dim">no rollback triggers armed</td></tr>');
}

function confidence(d) {
  const c = d.confidence;
  $('score').className = 'big ' + (c.score >= 80 ? 'ok' : c.score >= 50 ? 'warn' : 'bad');
  set('score', String(c.score));
  set('formula', esc(c.formula));
  set('score-terms', c.terms.map(t => `<tr><td>${esc(t.name)}</td><td>\u2212${num(t.penalty)}</td>` +
    `<td>of ${t.weight}</td>` +
    `<td>${t.measured === null ? '' : Number(t.measured).toPrecision(3)}${t.threshold === null ? ''
      : ' / ' + t.threshold}</td><td class="dim">${esc(t.text)}</td></tr>`).join(''));
}

// When: the clock time today, the date too before today, and how long ago.
function when(t, now) {
  if (!t) return '<span class="dim">never</span>';
  const d = new Date(t * 1000), age = Math.max(0, now - t);
  const text = d.toDateString() === new Date(now * 1000).toDateString() ? clock(t)
    : d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
  const ago = age < 90 ? `${Math.round(age)} s` : age < 5400 ? `${Math.round(age / 60)} min`
    : age < 172800 ? `${Math.round(age / 3600)} h` : `${Math.round(age / 86400)} d`;
  return `${text} <span class="dim">(${ago} ago)</span>`;
}

function shareBar(share) {
  return share === null || share === undefined ? '' :
    `<div class="bar"><div style="width:${(100 * share).toFixed(1)}%"></div></div>`;
}

function coverage(d) {
  const c = d.coverage;
  set('coverage-rows', c.prefixes.map(r => {
    const compared = (r.at_least ? '\u2265 ' : '') + r.compared +
      (r.compared_at_most > r.compared ? ` <span class="dim">(\u2264 ${r.compared_at_most})</span>` : '') +
      (r.shadow_share === null ? '' : ` \u00b7 <b>${r.at_least ? '\u2265 ' : ''}${pct(r.shadow_share, 1)}</b>`);
    const verified = r.verified ? `${r.agree} equal, <span class="${r.differ ? 'bad' : 'dim'}">${r.differ} differ` +
      `</span> \u00b7 <b>${pct(r.verified_share, 1)}</b>` : '<span class="dim">not in the last verify</span>';
    return `<tr data-prefix="${esc(r.prefix)}"><td>${r.prefix === '' ? '<span class="dim">(no prefix)</span>'
      : esc(r.prefix)}</td><td>${r.keys ?? '<span class="dim">?</span>'}</td>` +
      `<td>${compared}${shareBar(r.shadow_share)}</td><td>${when(r.last_compared_unix, d.time)}</td>` +
      `<td>${verified}${shareBar(r.verified_share)}</td><td>${r.verified ? when(r.verified_unix, d.time) : ''}</td>` +
      '</tr>';
  }).join('') || '<tr><td colspan="6" class="dim">no key compared or verified yet</td></tr>');
  set('coverage-note', c.note ? esc(c.note) : '');
  set('coverage-since', c.shadow_since_unix ? 'shadow comparisons counted since ' + when(c.shadow_since_unix, d.time)
    : '');
}

function rules(d) {
  const r = d.comparison_rules;
  $('rules-section').style.display = r.length ? '' : 'none';
  set('rules-rows', r.map(x => `<tr${x.expired ? ' class="expired"' : ''}><td><code>${esc(x.keys)}</code></td>` +
    `<td>${esc(x.owner)}</td><td>${esc(x.expires)}</td><td>${x.hits}</td><td>` +
    (x.expired ? `<b>${esc(x.warning)}</b>` : '<span class="ok">applies</span>') +
    `</td><td class="dim">${esc([...x.ignore_fields, ...(x.numeric_tolerance ? ['\u00b1' + x.numeric_tolerance] : [])]
      .join(', '))}${x.reason ? ' \u00b7 ' + esc(x.reason) : ''}</td></tr>`).join(''));
}

function side(name, size, digest) {
  return size === null || size === undefined ? `${name}: <span class="dim">absent</span>`
    : `${name}: ${size} bytes <code>${esc(digest)}</code>`;
}

// One triage record: the routing decision, the trace, the documents, and the key's recent writes.
function record(r) {
  const writes = (r.writes || []).map(w => `<tr><td>${clock(w.time)}</td><td>${esc(w.op)}</td>` +
    `<td>${esc(w.source)} \u2192 ${esc(w.target)}</td><td class="${w.state === 'pending' ? 'pending' : 'settled'}">` +
    `${esc(w.state)}</td></tr>`).join('');
  const values = r.values ? `<tr><th>values</th><td><div class="dim">primary (${esc(r.route)})</div>` +
    `<pre>${esc(r.primary ?? '(absent)')}</pre><div class="dim">shadow (${esc(r.secondary)})</div>` +
    `<pre>${esc(r.shadow ?? '(absent)')}</pre></td></tr>`
    : '<tr><th>values</th><td class="dim">not recorded (discrepancies.record_values is off)</td></tr>';
  return `<div class="record"><div><b>${clock(r.time)}</b> ${esc(r.kind)} on ${esc(r.op)}` +
    (r.detail ? ` <span class="dim">${esc(r.detail)}</span>` : '') + '</div><table>' +
    `<tr><th>routing</th><td class="route">primary <b>${esc(r.route)}</b> \u00b7 secondary ` +
    `<b>${esc(r.secondary || '?')}</b> \u00b7 reason <b>${esc(r.reason || '?')}</b> \u00b7 bucket ` +
    `${r.bucket ?? '\u2013'} \u00b7 flags ${esc(r.revision || '(none)')}</td></tr>` +
    `<tr><th>trace id</th><td>${r.trace_id ? `<code>${esc(r.trace_id)}</code>` : '<span class="dim">none</span>'}` +
    '</td></tr>' +
    `<tr><th>documents</th><td>${side('primary', r.primary_size, r.primary_digest)} \u00b7 ` +
    `${side('shadow', r.shadow_size, r.shadow_digest)}</td></tr>` +
    ((r.paths || []).length ? `<tr><th>differing paths</th><td><code>${esc(r.paths.join(', '))}</code>` +
      `${r.paths_truncated ? ' <span class="dim">(more not listed)</span>' : ''}</td></tr>` : '') + values +
    `<tr><th>recent writes</th><td>${writes ? `<table>${writes}</table>`
      : '<span class="dim">none seen by this proxy\'s queue</span>'}</td></tr></table></div>`;
}

const SHOWN_RECORDS = 5;

async function triage(key) {
  picked = key;
  for (const tr of document.querySelectorAll('#latest tr')) tr.classList.toggle('picked', tr.dataset.key === key);
  set('triage', `<div class="dim">triage of ${esc(key)}&hellip;</div>`);
  try {
    const reply = await fetch('discrepancies.json?key=' + encodeURIComponent(key), {cache: 'no-store'});
    if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}`);
    const doc = await reply.json();
    if (picked !== key) return;  // another row was clicked meanwhile
    const newest = doc.records.slice().reverse();
    set('triage', `<div class="row"><h2 style="margin:0">Triage of</h2><b id="triage-key">${esc(key)}</b>` +
      `<span class="dim">${doc.count} record${doc.count === 1 ? '' : 's'} in the log` +
      (doc.count > SHOWN_RECORDS ? `, newest ${SHOWN_RECORDS} shown` : '') +
      '</span><button id="triage-close">close</button></div>' +
      (newest.slice(0, SHOWN_RECORDS).map(record).join('') || '<div class="dim">no record in the log</div>'));
  } catch (error) {
    if (picked === key) set('triage', `<div class="bad">triage of ${esc(key)} failed: ${esc(error.message)}</div>`);
  }
}

function draw(d) {
  phase(d); traffic(d); figures(d); discrepancies(d); replication(d); jobs(d); rollbacks(d); health(d);
  confidence(d); coverage(d); rules(d);
}

function down(why) {
  if (downSince === null) downSince = Date.now() / 1000;
  document.body.classList.add('down');
  set('banner', `proxy not answering since ${clock(downSince)} <span style="font-weight:400">(${esc(why)})</span>`);
}

async function poll() {
  const abort = new AbortController(), timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const reply = await fetch('dashboard.json', {cache: 'no-store', signal: abort.signal});
    if (!reply.ok) throw new Error(`${reply.status} ${reply.statusText}` +
      (reply.status === 401 ? ': the page needs the bearer token of admin.token_file' : ''));
    const doc = await reply.json();
    draw(doc);
    downSince = null;
    document.body.classList.remove('down');
    set('updated', 'updated ' + clock(doc.time));
  } catch (error) {
    down(error.name === 'AbortError' ? `no answer within ${TIMEOUT_MS / 1000} s` : error.message);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}
document.addEventListener('click', event => {
  if (event.target.closest('#triage-close')) { picked = null; set('triage', ''); return; }
  const row = event.target.closest('#latest tr[data-key]');
  if (!row) return;
  event.preventDefault();
  triage(row.dataset.key);
});
poll();
