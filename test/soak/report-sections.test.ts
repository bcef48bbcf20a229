import { describe, expect, it } from 'vitest';
import { keepMeasuredSections, measuredSections, withSection } from './report-sections.js';

/** Measured sections of docs/RELIABILITY.md survive the soak runner's rewrite and are replaced only by their own script. */
describe('measured report sections', () => {
  it('are added, replaced in place, and carried over into a freshly rendered report', () => {
    const one = withSection('# Report\n\nsoak text\n', 'a', '## A\nfirst');
    expect(one).toBe('# Report\n\nsoak text\n\n<!-- measured:begin a -->\n## A\nfirst\n<!-- measured:end a -->\n');
    const two = withSection(withSection(one, 'b', '## B\nb1'), 'a', '## A\nsecond');
    expect(two).toContain('## A\nsecond');
    expect(two).not.toContain('first');
    expect(two.indexOf('## A')).toBeLessThan(two.indexOf('## B'));
    expect([...measuredSections(two).keys()]).toEqual(['a', 'b']);
    const regenerated = keepMeasuredSections(two, '# Report\n\nnew soak text\n');
    expect(regenerated).toContain('new soak text');
    expect(regenerated).not.toContain('\nsoak text');
    expect(measuredSections(regenerated)).toEqual(measuredSections(two));
  });
});
