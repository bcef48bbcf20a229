/**
 * docs/RELIABILITY.md is rewritten by the soak runner, but some of its sections are measured by
 * other scripts (for example the stalled-HTTP measurement of issue 9). Such a section sits between
 * `<!-- measured:begin NAME -->` and `<!-- measured:end NAME -->`; its own script replaces it, and
 * the soak runner carries every such section over from the previous file unchanged.
 */

const BLOCK = /<!-- measured:begin ([\w.-]+) -->[\s\S]*?<!-- measured:end \1 -->\n?/g;

/** The measured sections of `text`, in order, each with its markers. */
export function measuredSections(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(BLOCK)) out.set(m[1]!, m[0].endsWith('\n') ? m[0] : `${m[0]}\n`);
  return out;
}

/** `text` with the section `name` replaced by `body` (appended at the end if it was not there). */
export function withSection(text: string, name: string, body: string): string {
  const block = `<!-- measured:begin ${name} -->\n${body.trimEnd()}\n<!-- measured:end ${name} -->\n`;
  let found = false;
  const replaced = text.replace(BLOCK, (whole, n: string) => {
    if (n !== name) return whole;
    found = true;
    return block;
  });
  return found ? replaced : `${replaced.trimEnd()}\n\n${block}`;
}

/** A freshly rendered report with the measured sections of the previous one appended. */
export function keepMeasuredSections(previous: string, rendered: string): string {
  let out = rendered;
  for (const [name, block] of measuredSections(previous)) {
    const body = block.replace(/^<!-- measured:begin [\w.-]+ -->\n/, '').replace(/<!-- measured:end [\w.-]+ -->\n?$/, '');
    out = withSection(out, name, body);
  }
  return out;
}
