#!/usr/bin/env node
// Checks every relative link of the project's Markdown: the file exists, and a `#fragment`
// names a heading of it (GitHub's anchors). Run by the test command.
import { readFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SKIP = new Set(['node_modules', 'target', 'build', '.git', '.wrangler', 'artifacts', 'dist', 'fuzz']);

function markdownFiles(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    if (SKIP.has(name) || name.startsWith('build-')) continue;
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...markdownFiles(full));
    else if (name.endsWith('.md')) out.push(full);
  }
  return out;
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading) {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, '').replace(/ /g, '-');
}

function anchors(file) {
  const text = readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '');
  const seen = new Map();
  const out = new Set();
  for (const m of text.matchAll(/^#{1,6} (.*)$/gm)) {
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

const broken = [];
for (const file of markdownFiles(ROOT)) {
  const text = readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1];
    if (/^(https?:|mailto:)/.test(target)) continue;
    const [p, fragment] = target.split('#');
    const to = p ? path.resolve(path.dirname(file), decodeURIComponent(p)) : file;
    const where = `${path.relative(ROOT, file)}: ${target}`;
    if (!existsSync(to)) {
      broken.push(`${where} (no such file)`);
    } else if (fragment && to.endsWith('.md') && !anchors(to).has(fragment)) {
      broken.push(`${where} (no such heading)`);
    }
  }
}
if (broken.length) {
  console.error(`broken links:\n  ${broken.join('\n  ')}`);
  process.exit(1);
}
console.log('links: every relative link of the Markdown resolves');
