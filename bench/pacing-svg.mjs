// Draws how pacing shapes the traffic, from a benchmark run's results.json, as one SVG with no
// dependencies: per second, what the clients offered, what the proxy sent upstream, what the
// upstream served and what it can take, for scenario (b) (twice the upstream's capacity) and
// scenario (e) (twice the key's input-token limit).
//
//   node bench/pacing-svg.mjs [bench/results/results.json] [docs/pacing.svg]
import { readFileSync, writeFileSync } from 'node:fs';

const [input = 'bench/results/results.json', output = 'docs/pacing.svg'] = process.argv.slice(2);
const results = JSON.parse(readFileSync(input, 'utf8'));
const scenarios = results.sections?.overload?.scenarios ?? [];

const PANELS = [
  { id: 'b', title: '(b) twice the upstream’s capacity' },
  { id: 'e', title: '(e) twice the key’s input-token limit' },
];
const SERIES = [
  { key: 'arrivals', label: 'offered by clients', color: '#9aa0a6', dash: '' },
  { key: 'upstream_calls', label: 'sent upstream', color: '#1a73e8', dash: '' },
  { key: 'upstream_ok', label: 'served by the upstream', color: '#188038', dash: '' },
];
const W = 460;
const H = 260;
const M = { left: 44, right: 12, top: 34, bottom: 36 };

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

function panel(spec, x0) {
  const scenario = scenarios.find((s) => s.id === spec.id);
  const ours = scenario?.policies?.find((p) => p.policy === 'ours');
  if (!ours) return `<text x="${x0 + 20}" y="40">scenario (${spec.id}) not in ${esc(input)}</text>`;
  const s = ours.series;
  // The upstream's limit in requests a second: its capacity, or the key's refill.
  const limit = scenario.sustainable_rps ?? scenario.capacity;
  const last = s.t.length - 1 - [...s.upstream_calls].reverse().findIndex((v, i) => v > 0 || s.arrivals[s.t.length - 1 - i] > 0);
  const tMax = Math.max(10, last + 2);
  const yMax = Math.ceil(Math.max(limit ?? 0, ...SERIES.flatMap((k) => s[k.key].slice(0, tMax))) / 5) * 5 + 5;
  const px = (t) => x0 + M.left + ((W - M.left - M.right) * t) / tMax;
  const py = (v) => M.top + (H - M.top - M.bottom) * (1 - v / yMax);
  const parts = [`<text x="${x0 + M.left}" y="18" font-weight="bold">${esc(spec.title)}</text>`];
  // Axes and grid.
  for (let v = 0; v <= yMax; v += yMax > 30 ? 10 : 5) {
    parts.push(`<line x1="${px(0)}" x2="${px(tMax)}" y1="${py(v)}" y2="${py(v)}" stroke="#eee"/>`);
    parts.push(`<text x="${px(0) - 6}" y="${py(v) + 4}" text-anchor="end">${v}</text>`);
  }
  for (let t = 0; t <= tMax; t += tMax > 40 ? 10 : 5) {
    parts.push(`<text x="${px(t)}" y="${H - M.bottom + 16}" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<line x1="${px(0)}" x2="${px(tMax)}" y1="${py(0)}" y2="${py(0)}" stroke="#555"/>`);
  parts.push(`<text x="${px(tMax / 2)}" y="${H - 4}" text-anchor="middle">seconds</text>`);
  const yMid = (M.top + H - M.bottom) / 2;
  parts.push(`<text x="${x0 + 12}" y="${yMid}" text-anchor="middle" transform="rotate(-90 ${x0 + 12} ${yMid})">requests per second</text>`);
  if (limit) {
    parts.push(`<line x1="${px(0)}" x2="${px(tMax)}" y1="${py(limit)}" y2="${py(limit)}" stroke="#d93025" stroke-dasharray="5 4"/>`);
  }
  for (const k of SERIES) {
    // A step line: each second's count held over that second.
    let d = '';
    for (let t = 0; t < tMax; t += 1) {
      const v = s[k.key][t] ?? 0;
      d += `${t === 0 ? 'M' : 'L'}${px(t).toFixed(1)},${py(v).toFixed(1)}L${px(t + 1).toFixed(1)},${py(v).toFixed(1)}`;
    }
    parts.push(`<path d="${d}" fill="none" stroke="${k.color}" stroke-width="${k.key === 'arrivals' ? 1.5 : 2}"/>`);
  }
  const share = ours.success_vs_oracle != null ? `${ours.success_vs_oracle}× the oracle` : '';
  parts.push(`<text x="${px(0) + 6}" y="${M.top - 4}" fill="#555">${esc(share)}, ${ours.calls_per_request} calls/request, ${Math.round(1000 * (ours.upstream_429_share ?? 0)) / 10} % 429, ${Math.round(1000 * (ours.upstream_529_share ?? 0)) / 10} % 529</text>`);
  return parts.join('\n');
}

const legend = [
  ...SERIES.map((k, i) => `<line x1="${40 + i * 190}" x2="${64 + i * 190}" y1="${H + 14}" y2="${H + 14}" stroke="${k.color}" stroke-width="2"/><text x="${70 + i * 190}" y="${H + 18}">${esc(k.label)}</text>`),
  `<line x1="${40 + 3 * 190}" x2="${64 + 3 * 190}" y1="${H + 14}" y2="${H + 14}" stroke="#d93025" stroke-dasharray="5 4"/><text x="${70 + 3 * 190}" y="${H + 18}">what the upstream takes (capacity, or the key's refill)</text>`,
].join('\n');
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${H + 28}" viewBox="0 0 ${2 * W} ${H + 28}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
${PANELS.map((p, i) => panel(p, i * W)).join('\n')}
${legend}
</svg>
`;
writeFileSync(output, svg);
console.log(`wrote ${output} from ${input}`);
