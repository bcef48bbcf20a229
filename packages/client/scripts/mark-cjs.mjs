// dist/cjs holds CommonJS under a package whose "type" is "module": this marker makes Node (and
// TypeScript's NodeNext resolution) read the .js and .d.ts files below it as CommonJS.
import { writeFileSync } from 'node:fs';
writeFileSync(new URL('../dist/cjs/package.json', import.meta.url), '{\n  "type": "commonjs"\n}\n');
