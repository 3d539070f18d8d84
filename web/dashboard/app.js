// The kith dashboard (docs/dashboard.md): one page per concern, drawn from the
// local API with the session cookie and kept live by its event stream. Plain
// DOM and template strings; every value put into HTML goes through html``.
import { generate } from '/ui/vendor/lean-qr.mjs'

const csrf = document.querySelector('meta[name="kith-csrf"]').content
const main = document.getElementById('main')
const message = document.getElementById('message')
const live = document.getElementById('live')

// --- API ------------------------------------------------------------------

async function api (method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: { 'x-kith-csrf': csrf, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  const json = await res.json().catch(() => ({}))
  if (!res.ok) {
    if (res.status === 401) say('The session is over: run kith open again for a new login link.', true)
    throw new Error(`${json.error?.message ?? `the daemon answered ${res.status}`} [${json.error?.code ?? res.status}]`)
  }
  return json
}

/** runs an action, saying how it went in the alert line */
async function act (what, fn) {
  try {
    await fn()
    say(`${what}: done`)
    await render()
  } catch (err) {
    say(`${what} failed: ${err.message}`, true)
  }
}

function say (text, bad = false) {
  message.textContent = text
  message.className = bad ? 'bad' : ''
}

// --- HTML -----------------------------------------------------------------

class Raw { constructor (text) { this.text = text } }
const raw = text => new Raw(text)
const escape = value => String(value).replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`)
function html (strings, ...values) {
  let out = strings[0]
  values.forEach((v, i) => {
    out += (Array.isArray(v) ? v.map(x => x instanceof Raw ? x.text : escape(x)).join('') : v instanceof Raw ? v.text : v == null ? '' : escape(v)) + strings[i + 1]
  })
  return raw(out)
}

// --- formatting -----------------------------------------------------------

function bytes (n) {
  if (n == null) return '-'
  const units = ['B', 'kB', 'MB', 'GB', 'TB']
  let i = 0
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++ }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}
const rate = n => n == null || n === 'unlimited' ? 'unlimited' : `${bytes(n)}/s`
function duration (s) {
  if (s == null) return '-'
  if (s < 90) return `${Math.round(s)} s`
  if (s < 5400) return `${Math.round(s / 60)} min`
  return `${(s / 3600).toFixed(1)} h`
}
function ago (when) {
  if (when == null) return 'never'
  const s = (Date.now() - (typeof when === 'number' ? when : Date.parse(when))) / 1000
  return s < 5 ? 'just now' : `${duration(s)} ago`
}
const short = id => id.length > 16 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id

// --- pages ----------------------------------------------------------------

const pages = {
  async status () {
    const s = await api('GET', '/v1/status')
    const reach = s.reachability ?? {}
    return html`<h2>Status</h2>
      <table><tbody>
        <tr><th scope="row">Peer id</th><td class="mono">${s.peerId}</td></tr>
        <tr><th scope="row">Name</th><td>${s.name}</td></tr>
        <tr><th scope="row">Listening</th><td class="mono">${s.addrs.join(' ')}</td></tr>
        <tr><th scope="row">Friends online</th><td>${s.friends.online} of ${s.friends.total}</td></tr>
        <tr><th scope="row">Reachability</th><td>${reach.state ?? 'unknown'}${reach.publicAddrs?.length ? ` at ${reach.publicAddrs.join(', ')}` : ''}${reach.checkedAt != null ? `, checked ${ago(reach.checkedAt)}` : ''}</td></tr>
        <tr><th scope="row">Relays in use</th><td>${s.relays?.using?.map(r => r.label).join(', ') || 'none'}</td></tr>
        <tr><th scope="row">Relaying for</th><td>${s.relays?.serving?.map(r => r.label).join(', ') || 'nobody'}</td></tr>
      </tbody></table>
      <h2>Bandwidth over the last hour</h2>
      ${plot('up', 'Upload')}
      ${plot('down', 'Download')}`
  },

  async friends () {
    const { friends } = await api('GET', '/v1/friends')
    const active = friends.filter(f => f.state === 'active')
    return html`<h2>Friends</h2>
      ${active.length === 0 ? html`<p>No friends yet: make an invite on the <a href="#invites">Invites</a> page.</p>` : html`
      <table>
        <thead><tr><th scope="col">Name</th><th scope="col">Online</th><th scope="col">Link</th><th scope="col">Last seen</th><th scope="col">You grant</th><th scope="col">They grant</th><th scope="col">Change</th></tr></thead>
        <tbody>${active.map(f => html`<tr data-friend="${f.peerId}">
          <td>${f.label}<br><span class="mono">${short(f.peerId)}</span></td>
          <td class="${f.link.online ? 'online' : 'offline'}">${f.link.online ? 'online' : 'offline'}</td>
          <td>${f.link.online ? f.link.kind : '-'}</td>
          <td>${f.link.online ? 'now' : ago(f.lastSeen)}</td>
          <td>${f.grantsToThem.map(g => html`${g} <button data-action="ungrant" data-peer="${f.peerId}" data-service="${g}" aria-label="Stop granting ${g} to ${f.label}">×</button> `)}</td>
          <td>${f.grantsFromThem.join(', ') || 'nothing'}</td>
          <td>
            <form data-form="rename" data-peer="${f.peerId}"><label>New name<input name="label" required maxlength="64" aria-label="New name for ${f.label}"></label><button>Rename</button></form>
            <form data-form="grant" data-peer="${f.peerId}"><label>Grant<select name="service" aria-label="Service to grant ${f.label}">${['files', 'locate', 'relay', 'backup'].filter(s => !f.grantsToThem.includes(s)).map(s => html`<option>${s}</option>`)}</select></label><button>Grant</button></form>
            <button data-action="revoke" data-peer="${f.peerId}" data-label="${f.label}">End friendship</button>
          </td></tr>`)}</tbody>
      </table>`}`
  },

  async invites () {
    const { invites } = await api('GET', '/v1/invites')
    return html`<h2>Invite a friend</h2>
      <form data-form="invite">
        <label>Their name<input name="label" maxlength="64"></label>
        <label>Valid for<select name="expires"><option value="3600">1 hour</option><option value="86400">1 day</option><option value="604800" selected>7 days</option></select></label>
        <label>Uses<input name="uses" type="number" min="1" max="1000" value="1"></label>
        <fieldset><legend>Grant</legend>${['files', 'locate', 'relay', 'backup'].map(s => html`<label><input type="checkbox" name="grant" value="${s}" ${s !== 'backup' ? raw('checked') : ''}>${s}</label>`)}</fieldset>
        <button>Create invite</button>
      </form>
      <div id="new-invite"></div>
      <h2>Accept an invite</h2>
      <form data-form="accept">
        <label>Invite text<textarea name="text" required></textarea></label>
        <label>Call them<input name="label" maxlength="64"></label>
        <button>Accept</button>
      </form>
      <h2>Your invites</h2>
      ${invites.length === 0 ? html`<p>None yet.</p>` : html`<table>
        <thead><tr><th scope="col">Id</th><th scope="col">For</th><th scope="col">Status</th><th scope="col">Used</th><th scope="col">Expires</th><th scope="col">Grants</th><th scope="col"></th></tr></thead>
        <tbody>${invites.map(i => html`<tr><td class="mono">${i.id}</td><td>${i.label ?? '-'}</td><td>${i.status}</td><td>${i.used}/${i.uses}</td><td>${new Date(i.expires).toLocaleString()}</td><td>${i.grants.join(', ')}</td>
          <td>${i.status === 'open' ? html`<button data-action="revoke-invite" data-id="${i.id}">Revoke</button>` : ''}</td></tr>`)}</tbody></table>`}`
  },

  async shares () {
    const { shares } = await api('GET', '/v1/shares')
    return html`<h2>Share a folder or file</h2>
      <form data-form="share">
        <label>Path on this machine (absolute)<input name="path" required size="40"></label>
        <label>Name (optional)<input name="name" maxlength="255"></label>
        <button>Share</button>
      </form>
      <h2>Your shares</h2>
      ${shares.length === 0 ? html`<p>Nothing shared yet.</p>` : html`<table>
        <thead><tr><th scope="col">Name</th><th scope="col">Path</th><th scope="col">Files</th><th scope="col">Size</th><th scope="col">With</th><th scope="col">Version</th><th scope="col"></th></tr></thead>
        <tbody>${shares.map(s => html`<tr><td>${s.name}</td><td class="mono">${s.source}</td><td>${s.files}</td><td>${bytes(s.size)}</td><td>${s.with.map(w => w.label).join(', ') || 'nobody'}</td><td>${s.version}</td>
          <td><button data-action="unshare" data-id="${s.id}" aria-label="Stop sharing ${s.name}">Unshare</button></td></tr>`)}</tbody></table>`}`
  },

  async transfers () {
    const [{ transfers, eta }, { friends }] = await Promise.all([api('GET', '/v1/transfers'), api('GET', '/v1/friends')])
    return html`<h2>Fetch from a friend</h2>
      <form data-form="fetch">
        <label>Friend<select name="friend" required>${friends.filter(f => f.state === 'active').map(f => html`<option value="${f.peerId}">${f.label}</option>`)}</select></label>
        <label>Share<input name="share" required></label>
        <label>Path in it (optional)<input name="path"></label>
        <label>Into folder (absolute)<input name="destDir" required size="30"></label>
        <label>Priority<select name="priority"><option>urgent</option><option selected>normal</option><option>background</option></select></label>
        <button>Fetch</button>
      </form>
      <h2>Transfers</h2>
      <p>Queue: ${eta == null ? 'nothing waiting' : `about ${duration(eta)} left`}</p>
      ${transfers.length === 0 ? html`<p>None yet.</p>` : html`<table>
        <thead><tr><th scope="col">Id</th><th scope="col">From</th><th scope="col">What</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Speed</th><th scope="col">ETA</th><th scope="col">Priority</th><th scope="col"></th></tr></thead>
        <tbody>${transfers.map(transferRow)}</tbody></table>`}`
  },

  async downloads () {
    const { downloads, eta } = await api('GET', '/v1/downloads')
    return html`<h2>Download from the web</h2>
      <form data-form="download">
        <label>URLs, one a line (http, https, ftp, sftp, s3, webdav, hls, kith)<textarea name="urls" required></textarea></label>
        <label>Into (absolute: a file for one URL, or a folder ending in /)<input name="dest" required size="40"></label>
        <label>Priority<select name="priority"><option>urgent</option><option selected>normal</option><option>background</option></select></label>
        <button>Download</button>
      </form>
      <h2>Downloads</h2>
      <p>Queue, with friend fetches: ${eta == null ? 'no estimate' : `about ${duration(eta)} left`}</p>
      ${downloads.length === 0 ? html`<p>None yet.</p>` : html`<table>
        <thead><tr><th scope="col">Id</th><th scope="col">URL</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Speed</th><th scope="col">ETA</th><th scope="col">Priority</th><th scope="col"></th></tr></thead>
        <tbody>${downloads.map(downloadRow)}</tbody></table>`}`
  },

  async backups () {
    const [health, { friends }, { jobs }] = await Promise.all([api('GET', '/v1/backup/health'), api('GET', '/v1/backup/ledger'), api('GET', '/v1/backup/jobs')])
    return html`<h2>Backup health</h2>
      <p>Each snapshot wants ${health.replicas} copies; a host is unreachable after ${duration(health.unreachableAfterMs / 1000)} without contact, and audited every ${duration(health.auditEveryMs / 1000)}.</p>
      <button data-action="audit">Audit every host now</button>
      <h3>Hosts (friends who keep your backups)</h3>
      ${health.hosts.length === 0 ? html`<p>No host yet: grant a friend <code>backup</code> and run <code>kith backup</code>.</p>` : html`<table>
        <thead><tr><th scope="col">Host</th><th scope="col">State</th><th scope="col">Keeps</th><th scope="col">Last audit</th><th scope="col">Last contact</th><th scope="col">Lost</th></tr></thead>
        <tbody>${health.hosts.map(h => html`<tr><td>${h.name}</td><td class="${h.state === 'ok' ? 'online' : 'bad'}">${h.state}${h.full ? ' (full)' : ''}${h.granting ? '' : ', not granting'}</td><td>${bytes(h.bytes)} in ${h.blobs} blobs</td>
          <td>${h.lastAudit == null ? 'never' : `${ago(h.lastAudit.at)}: ${h.lastAudit.ok ? 'passed' : `failed${h.lastAudit.error ? ` (${h.lastAudit.error.code})` : ''}`}`}</td><td>${ago(h.lastContact)}</td><td>${h.lost}</td></tr>`)}</tbody></table>`}
      <h3>Snapshots</h3>
      ${health.snapshots.length === 0 ? html`<p>No snapshot yet.</p>` : html`<table>
        <thead><tr><th scope="col">#</th><th scope="col">Label</th><th scope="col">Made</th><th scope="col">Copies</th><th scope="col">Short</th><th scope="col">Lost</th><th scope="col">Why</th></tr></thead>
        <tbody>${health.snapshots.map(sn => html`<tr><td>${sn.seq}</td><td>${sn.label ?? sn.id}</td><td>${ago(sn.created)}</td><td class="${sn.met ? 'online' : 'bad'}">fewest ${sn.fewest} of ${sn.wanted}</td><td>${sn.short}</td><td>${sn.lost}</td><td>${sn.why ?? ''}</td></tr>`)}</tbody></table>`}
      <h2>Ledger</h2>
      ${friends.length === 0 ? html`<p>Nothing kept either way.</p>` : html`<table>
        <thead><tr><th scope="col">Friend</th><th scope="col">You keep for them</th><th scope="col">They keep for you</th></tr></thead>
        <tbody>${friends.map(f => html`<tr><td>${f.name}</td><td>${f.forThem == null ? '-' : `${bytes(f.forThem.used)} of ${f.forThem.quota == null ? 'no quota' : bytes(f.forThem.quota)}`}</td><td>${f.forMe == null ? '-' : `${bytes(f.forMe.bytes)} (${f.forMe.state})`}</td></tr>`)}</tbody></table>`}
      <h2>Recent jobs</h2>
      ${jobs.length === 0 ? html`<p>None since the daemon started.</p>` : html`<table>
        <thead><tr><th scope="col">Id</th><th scope="col">What</th><th scope="col">Started</th><th scope="col">State</th><th scope="col">Progress</th><th scope="col">Speed</th><th scope="col">ETA</th></tr></thead>
        <tbody>${jobs.map(j => html`<tr><td class="mono">${j.id}</td><td>${j.op}</td><td>${ago(j.started)}</td><td>${j.state}${j.error ? html` <span class="bad">${j.error.code}</span>` : ''}</td>
          <td><progress max="100" value="${j.totalBytes > 0 ? Math.floor(100 * j.doneBytes / j.totalBytes) : 0}" aria-label="job ${j.id}"></progress> ${bytes(j.doneBytes)} of ${bytes(j.totalBytes)}, ${j.files} files</td>
          <td>${j.state === 'running' ? rate(j.rate) : '-'}</td><td>${j.state === 'running' ? duration(j.eta) : '-'}</td></tr>`)}</tbody></table>`}`
  },

  async limits () {
    const view = await api('GET', '/v1/limits')
    const l = view.limits
    const schedule = (l.schedule ?? []).map(r => `${r.from}-${r.to} up=${r.upload ?? 'unlimited'} down=${r.download ?? 'unlimited'}`)
    return html`<h2>Caps</h2>
      <form data-form="limits">
        <label>Upload cap<input name="upload" value="${l.upload === 'unlimited' || l.upload == null ? 'unlimited' : `${l.upload}`}" aria-describedby="rate-help"></label>
        <label>Download cap<input name="download" value="${l.download === 'unlimited' || l.download == null ? 'unlimited' : `${l.download}`}" aria-describedby="rate-help"></label>
        <button>Save caps</button>
      </form>
      <p id="rate-help">Rates like 10MB/s or 512KiB/s, or unlimited. Now: upload ${rate(l.upload)}, download ${rate(l.download)}.</p>
      <h2>Schedule</h2>
      <form data-form="schedule">
        <label>One rule a line, first match wins, local time<textarea name="rules" aria-describedby="rule-help">${schedule.join('\n')}</textarea></label>
        <button>Save schedule</button>
      </form>
      <p id="rule-help">Like <code>23:00-07:00 up=unlimited down=2MB/s</code>. An empty box removes the schedule.</p>`
  }
}

function transferRow (t) {
  const pct = t.totalBytes > 0 ? Math.floor(100 * t.doneBytes / t.totalBytes) : (t.state === 'done' ? 100 : 0)
  const running = t.state === 'running' || t.state === 'queued'
  return html`<tr id="t-${t.id}" data-state="${t.state}">
    <td class="mono">${t.id}</td><td>${t.ownerLabel}</td><td>${t.shareName}${t.path ? `/${t.path}` : ''}</td>
    <td class="state">${t.state}${t.error ? html` <span class="bad">${t.error.code}</span>` : ''}</td>
    <td><progress max="100" value="${pct}" aria-label="${t.shareName} ${pct}%">${pct}%</progress> <span class="done">${bytes(t.doneBytes)} of ${bytes(t.totalBytes)}</span></td>
    <td class="speed">${running ? rate(t.rate) : '-'}</td><td class="eta">${running ? duration(t.eta) : '-'}</td>
    <td>${running ? html`<select data-action="priority" data-id="${t.id}" aria-label="Priority of ${t.id}">${['urgent', 'normal', 'background'].map(p => html`<option ${p === t.priority ? raw('selected') : ''}>${p}</option>`)}</select>` : t.priority}</td>
    <td>${running ? html`<button data-action="pause" data-id="${t.id}">Pause</button> ` : ''}${t.state === 'paused' ? html`<button data-action="resume" data-id="${t.id}">Resume</button> ` : ''}${running || t.state === 'paused' ? html`<button data-action="cancel" data-id="${t.id}">Cancel</button>` : ''}</td>
  </tr>`
}

function downloadRow (d) {
  const pct = d.totalBytes > 0 ? Math.floor(100 * d.doneBytes / d.totalBytes) : (d.state === 'done' ? 100 : 0)
  const running = d.state === 'running' || d.state === 'queued'
  return html`<tr id="d-${d.id}" data-state="${d.state}">
    <td class="mono">${d.id}</td><td class="mono">${d.url}</td>
    <td>${d.state}${d.error ? html` <span class="bad" title="${d.error.message}">${d.error.code}</span>` : ''}</td>
    <td><progress max="100" value="${pct}" aria-label="${d.name ?? d.url} ${pct}%">${pct}%</progress> ${bytes(d.doneBytes)} of ${d.totalBytes == null ? 'unknown' : bytes(d.totalBytes)}</td>
    <td>${running ? rate(d.rate) : '-'}</td><td>${running ? duration(d.eta) : '-'}</td>
    <td>${running ? html`<select data-action="download-priority" data-id="${d.id}" aria-label="Priority of ${d.id}">${['urgent', 'normal', 'background'].map(p => html`<option ${p === d.priority ? raw('selected') : ''}>${p}</option>`)}</select>` : d.priority}</td>
    <td>${running ? html`<button data-action="download-pause" data-id="${d.id}">Pause</button> ` : ''}${d.state === 'paused' ? html`<button data-action="download-resume" data-id="${d.id}">Resume</button> ` : ''}${running || d.state === 'paused' ? html`<button data-action="download-cancel" data-id="${d.id}">Cancel</button>` : ''}</td>
  </tr>`
}

// --- bandwidth over the last hour: the daemon's history, then the page's own samples every 2 s

const HOUR = 3600_000
const CLASSES = ['friend', 'foaf', 'public', 'backup', 'service']
const SERIES = ['total', ...CLASSES]
/**
 * Points, oldest first: `at` (this browser's clock, ms), `ms` (the time the
 * rates average over), and per direction the rates in bytes/s of each of
 * SERIES, with the cap in force where a live sample gave it.
 */
const history = []

/** The daemon's last hour (GET /v1/bandwidth/history), once, as the page opens. */
async function seed () {
  try {
    const h = await api('GET', '/v1/bandwidth/history')
    // the daemon's clock may not be this browser's (a page opened through ssh): times are taken relative to its `now`
    const shift = Date.now() - h.now
    h.at.forEach((at, i) => {
      const point = { at: at + shift, ms: h.ms[i] }
      for (const dir of ['up', 'down']) point[dir] = Object.fromEntries(SERIES.map(k => [k, h[dir][k]?.[i] ?? 0]))
      history.push(point)
    })
  } catch {}
}

async function sample () {
  try {
    const s = await api('GET', '/v1/status')
    document.getElementById('node').textContent = `${s.name} ${short(s.peerId)}`
    const at = Date.now()
    // /v1/status's rates are over its last 2 s: a point stands for 2 s at most (a tab in the background samples less often)
    const point = { at, ms: Math.min(2000, at - (history.at(-1)?.at ?? 0)) }
    for (const dir of ['up', 'down']) {
      const b = s.bandwidth[dir]
      const classes = Object.fromEntries(CLASSES.map(c => [c, b.classes?.[c]?.rate ?? 0]))
      // the total is the classes' sum, as in the daemon's history (a class's first 2 s would otherwise read above the lane's rate)
      point[dir] = { total: Object.values(classes).reduce((sum, r) => sum + r, 0), cap: b.cap ?? null, ...classes }
    }
    history.push(point)
    while (history[0].at < at - HOUR) history.shift()
    if (current() === 'status') for (const dir of ['up', 'down']) document.getElementById(`plot-${dir}`)?.replaceWith(plotElement(dir))
  } catch {}
}

function plot (dir, title) {
  return html`<h3>${title}</h3>${raw(plotElement(dir).outerHTML)}`
}

function plotElement (dir) {
  const now = Date.now()
  const points = history.filter(p => p.at >= now - HOUR)
  const peak = Math.max(0, ...points.map(p => p[dir].total))
  // the scale: the peak, or 1 B/s while nothing moved
  const max = Math.max(1, peak)
  const moved = Math.round(points.reduce((sum, p) => sum + p[dir].total * p.ms / 1000, 0))
  const latest = points.at(-1)?.[dir]
  const cap = history.findLast(p => p[dir].cap !== undefined)?.[dir].cap
  const wrap = document.createElement('figure')
  wrap.id = `plot-${dir}`
  // figures a test or a script can read without parsing the legend
  wrap.dataset.peak = String(peak)
  wrap.dataset.moved = String(moved)
  const lines = SERIES.map(name => {
    const xy = points.map(p => `${((p.at - now + HOUR) / HOUR * 600).toFixed(1)},${(150 - p[dir][name] / max * 140).toFixed(1)}`).join(' ')
    return `<polyline class="c-${name}" points="${xy}"></polyline>`
  }).join('')
  const summary = `peak ${rate(peak)}, ${bytes(moved)} moved in the last hour${cap !== undefined ? `, cap ${rate(cap)}` : ''}`
  wrap.innerHTML = `<svg class="plot" viewBox="0 0 600 150" preserveAspectRatio="none" role="img" aria-label="${escape(`${dir === 'up' ? 'upload' : 'download'} now ${rate(latest?.total ?? 0)}, ${summary}`)}">${lines}</svg>
    <div class="axis" aria-hidden="true"><span>1 h ago</span><span>30 min ago</span><span>now</span></div>
    <figcaption class="legend">${SERIES.map(n => `<span class="c-${n}">— ${n} ${escape(rate(latest?.[n] ?? 0))}</span>`).join('')} (${escape(summary)})</figcaption>`
  return wrap
}

// --- actions ----------------------------------------------------------------

const enc = encodeURIComponent

main.addEventListener('click', event => {
  const b = event.target.closest('button[data-action]')
  if (b == null) return
  const { action, peer, service, id, label } = b.dataset
  if (action === 'ungrant') act(`Stop granting ${service}`, () => api('DELETE', `/v1/friends/${enc(peer)}/grants/${enc(service)}`))
  if (action === 'revoke' && confirm(`End the friendship with ${label}? Their connections are cut now.`)) act(`End friendship with ${label}`, () => api('POST', `/v1/friends/${enc(peer)}/revoke`))
  if (action === 'revoke-invite') act(`Revoke invite ${id}`, () => api('DELETE', `/v1/invites/${enc(id)}`))
  if (action === 'unshare') act('Unshare', () => api('DELETE', `/v1/shares/${enc(id)}`))
  if (['pause', 'resume', 'cancel'].includes(action)) act(`${action[0].toUpperCase()}${action.slice(1)} ${id}`, () => api('POST', `/v1/transfers/${id}/${action}`))
  if (['download-pause', 'download-resume', 'download-cancel'].includes(action)) act(`${action.slice(9)} ${id}`, () => api('POST', `/v1/downloads/${id}/${action.slice(9)}`))
  if (action === 'audit') act('Audit', () => api('POST', '/v1/backup/audits', {}))
  if (action === 'copy') {
    const text = document.getElementById('invite-text')
    text.select()
    navigator.clipboard?.writeText(text.value).then(() => say('Invite copied'), () => say('Select the text and copy it'))
  }
})

main.addEventListener('change', event => {
  const s = event.target.closest('select[data-action="priority"]')
  if (s != null) act(`Priority of ${s.dataset.id}`, () => api('POST', `/v1/transfers/${s.dataset.id}/priority`, { priority: s.value }))
  const d = event.target.closest('select[data-action="download-priority"]')
  if (d != null) act(`Priority of ${d.dataset.id}`, () => api('POST', `/v1/downloads/${d.dataset.id}/priority`, { priority: d.value }))
})

main.addEventListener('submit', event => {
  const form = event.target.closest('form[data-form]')
  if (form == null) return
  event.preventDefault()
  const data = new FormData(form)
  const v = name => (data.get(name) ?? '').toString().trim()
  const peer = form.dataset.peer
  switch (form.dataset.form) {
    case 'rename': return act('Rename', () => api('PATCH', `/v1/friends/${enc(peer)}`, { label: v('label') }))
    case 'grant': return act(`Grant ${v('service')}`, () => api('PUT', `/v1/friends/${enc(peer)}/grants/${enc(v('service'))}`))
    case 'invite': return createInvite(data)
    case 'accept': return act('Accept the invite', () => api('POST', '/v1/invites/accept', { text: v('text'), ...(v('label') ? { label: v('label') } : {}) }))
    case 'share': return act('Share', () => api('POST', '/v1/shares', { path: v('path'), ...(v('name') ? { name: v('name') } : {}) }))
    case 'fetch': return act('Fetch', () => api('POST', '/v1/transfers', { friend: v('friend'), share: v('share'), ...(v('path') ? { path: v('path') } : {}), destDir: v('destDir'), priority: v('priority') }))
    // a bare number is bytes/s; text like 10MB/s or unlimited is the daemon's to read; empty clears the setting
    case 'download': return act('Download', () => api('POST', '/v1/downloads', { urls: v('urls').split('\n').map(u => u.trim()).filter(Boolean), dest: v('dest'), priority: v('priority') }))
    case 'limits': return act('Save caps', () => api('PUT', '/v1/limits', { upload: capOf(v('upload')), download: capOf(v('download')) }))
    case 'schedule': {
      const rules = v('rules').split('\n').map(l => l.trim()).filter(Boolean)
      return act('Save schedule', () => api('PUT', '/v1/limits', { schedule: rules.length > 0 ? rules : null }))
    }
  }
})

const capOf = text => text === '' ? null : /^\d+$/.test(text) ? Number(text) : text

async function createInvite (data) {
  try {
    const label = (data.get('label') ?? '').toString().trim()
    const { invite, text } = await api('POST', '/v1/invites', {
      ...(label ? { label } : {}),
      expiresIn: Number(data.get('expires')),
      uses: Number(data.get('uses')),
      grants: data.getAll('grant')
    })
    await render()
    const box = document.getElementById('new-invite')
    box.innerHTML = html`<h3>Invite ${invite.id}${label ? ` for ${label}` : ''}</h3>
      <p>Your friend scans the code, or you send them the text; they accept it with <code>kith invite accept</code> or on their dashboard.</p>
      <canvas class="qr" id="invite-qr" role="img" aria-label="QR code of the invite text below"></canvas>
      <label>Invite text<textarea id="invite-text" readonly>${text}</textarea></label>
      <button data-action="copy">Copy the text</button>`.text
    generate(text).toCanvas(document.getElementById('invite-qr'))
    say(`Invite ${invite.id} created`)
  } catch (err) {
    say(`Create invite failed: ${err.message}`, true)
  }
}

// --- routing and live updates -------------------------------------------------

const current = () => (location.hash.slice(1) in pages ? location.hash.slice(1) : 'status')

/** renders begun: one that ends after a later one began draws nothing, so a slow, older read never covers a newer one */
let renders = 0

async function render () {
  const page = current()
  const turn = ++renders
  for (const a of document.querySelectorAll('nav a')) {
    if (a.getAttribute('href') === `#${page}`) a.setAttribute('aria-current', 'page')
    else a.removeAttribute('aria-current')
  }
  let text
  try {
    text = (await pages[page]()).text
  } catch (err) {
    text = html`<h2>${page}</h2><p class="bad">${err.message}</p>`.text
  }
  if (turn !== renders) return
  main.innerHTML = text
  main.dataset.page = page
}

window.addEventListener('hashchange', async () => {
  say('')
  await render()
  main.focus()
})

const events = new EventSource('/v1/events')
events.addEventListener('open', () => { live.textContent = 'live' })
events.addEventListener('error', () => { live.textContent = 'reconnecting…' })
events.addEventListener('download:progress', event => {
  const { download } = JSON.parse(event.data)
  const row = document.getElementById(`d-${download.id}`)
  if (row != null && current() === 'downloads') row.outerHTML = downloadRow(download).text
})
events.addEventListener('transfer:progress', event => {
  const { transfer } = JSON.parse(event.data)
  const row = document.getElementById(`t-${transfer.id}`)
  if (row != null && current() === 'transfers') row.outerHTML = transferRow(transfer).text
})
// a change of state, of friends or of their links: the pages that show it are drawn again, unless the user is typing in them
const redraws = {
  'transfer:state': ['transfers', 'downloads', 'status'],
  'download:state': ['downloads'],
  'backup:job': ['backups'],
  ...Object.fromEntries(['friend:added', 'friend:changed', 'friend:revoked', 'friend:online', 'friend:offline'].map(t => [t, Object.keys(pages)]))
}
for (const [type, shownOn] of Object.entries(redraws)) {
  events.addEventListener(type, () => {
    const typing = main.contains(document.activeElement) && document.activeElement !== main && document.activeElement.tagName !== 'BUTTON'
    if (shownOn.includes(current()) && !typing) render()
  })
}

await seed()
await render()
await sample()
setInterval(sample, 2000)
