import { statSync } from 'node:fs';

/**
 * Whether paths still name the files this process opened.
 *
 * SQLite keeps reading and writing the inodes it opened. When the database file (or its -wal) is
 * deleted while the server runs — a cleanup job, an operator, a volume remounted — or
 * replaced by renaming another file over it, every later commit succeeds into a file nobody will
 * ever open again: the acks are lies and the next start finds none of it. The only way to see this
 * from inside is to compare the device and inode a path names now with those recorded at open.
 *
 * A check is one stat per file (a few microseconds each; bench/micro/file-identity.bench.ts
 * measures it against a commit), cheap enough to run before every commit.
 */

export class FileLostError extends Error {
  override readonly name = 'FileLostError';
  readonly code = 'DATABASE_FILE_LOST';

  constructor(
    readonly path: string,
    readonly reason: 'removed' | 'replaced',
  ) {
    super(
      reason === 'removed'
        ? `${path} was removed while open: writes would go to a file no one will read again; restart the server`
        : `${path} was replaced while open: writes would go to the old file; restart the server`,
    );
  }
}

interface Opened {
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

export class FileIdentity {
  private readonly files: Opened[] = [];
  private lost: FileLostError | undefined;

  /**
   * Records what each path names now; call it right after the files were opened. A path that does
   * not exist yet is not guarded (SQLite creates -wal and -shm on first use).
   */
  constructor(
    paths: readonly string[],
    /** Called when the answer changes: with the error when a file is lost, undefined when all are back. */
    private readonly onChange?: (lost: FileLostError | undefined) => void,
  ) {
    for (const path of paths) {
      const st = statSync(path, { throwIfNoEntry: false });
      if (st !== undefined) this.files.push({ path, dev: st.dev, ino: st.ino });
    }
  }

  /** The guarded paths, for messages and tests. */
  get paths(): string[] {
    return this.files.map((f) => f.path);
  }

  /** The first file whose path no longer names it, or undefined when every path still does. */
  check(): FileLostError | undefined {
    let found: FileLostError | undefined;
    for (const f of this.files) {
      let st;
      try {
        st = statSync(f.path, { throwIfNoEntry: false });
      } catch {
        st = undefined; // EACCES, ENOTDIR (the folder replaced by a file): the path no longer leads to our file
      }
      if (st === undefined) found = new FileLostError(f.path, 'removed');
      else if (st.dev !== f.dev || st.ino !== f.ino) found = new FileLostError(f.path, 'replaced');
      if (found !== undefined) break;
    }
    if ((found === undefined) !== (this.lost === undefined)) {
      this.lost = found;
      try {
        this.onChange?.(found);
      } catch {
        // A listener's failure must not turn a check into a crash or a wrong answer.
      }
    } else if (found !== undefined) {
      this.lost = found;
    }
    return found;
  }

  /** Throws the FileLostError of check(). */
  assertSame(): void {
    const lost = this.check();
    if (lost !== undefined) throw lost;
  }
}
