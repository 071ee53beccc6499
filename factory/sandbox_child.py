"""The sandbox's child side, run as ``python -I -S -B sandbox_child.py CONFIG`` by factory/sandbox.py.

It reads the program from stdin, then, still as the user that started it: preloads the allowed modules, sets
no_new_privs and the rlimits, drops to the configured uid/gid, installs the audit hook, and only then runs
the program and calls its ``solution()``. It reports one JSON line per event on the descriptor named in
CONFIG. Nothing here may rely on what the program can change: the audit hook uses functions captured before
the program starts (C builtins that no assignment can replace), and reports with a C-level JSON encoder.
"""

import contextlib
import json
import linecache
import os
import resource
import signal
import stat
import sys
import traceback
from json.encoder import encode_basestring_ascii as _q  # the C function when _json is built


def _line(_q=_q, str=str, **kw: object) -> bytes:
    body = ", ".join(f"{_q(k)}: {'null' if v is None else _q(str(v))}" for k, v in kw.items())
    return ("{" + body + "}\n").encode()[:16000]


def guard(tmp, roots, max_writes, fd, streams):
    """Install the audit hook: the first refused event reports ``forbidden`` and ends the process.

    No code of the program runs inside the hook: arguments are read only as exact str, bytes or int
    (a subclass is copied with the C methods of its base; any other type is refused), and every function
    the hook calls was bound before the program started.
    """
    banned = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
              "os.forkpty", "os.kill", "os.killpg", "ctypes.", "gc.get_", "resource.prlimit", "pty.",
              "sys.settrace", "sys.setprofile")  # fmt: skip
    no_import = ("_posixsubprocess", "_ctypes", "ctypes")
    mutate = ("os.chmod", "os.chown", "os.link", "os.mkdir", "os.remove", "os.rename", "os.rmdir",
              "os.symlink", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "os.mkfifo",
              "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.move")  # fmt: skip
    creating = ("os.mkdir", "os.symlink", "os.link", "os.mkfifo", "os.mknod")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    writes = [0]
    b = {"str": str, "bytes": bytes, "int": int, "type": type, "issubclass": issubclass, "any": any}

    def text(x, b=b):
        """An exact str copy of a str or bytes argument; None for a descriptor; TypeError otherwise."""
        t = b["type"](x)
        if t is b["int"] or x is None:
            return None
        if b["issubclass"](t, b["str"]):
            return b["str"].__str__(x)
        if b["issubclass"](t, b["bytes"]):
            return b["bytes"].decode(x, "utf-8", "surrogateescape")
        raise TypeError(t)

    def resolve(x, getcwd=os.getcwd, lstat=os.lstat, readlink=os.readlink, islnk=stat.S_ISLNK):
        """os.path.realpath from captured C functions only; None for a descriptor."""
        p = text(x)
        if p is None:
            return None
        if not p.startswith("/"):
            p = getcwd() + "/" + p
        todo, out, links = p.split("/")[::-1], [""][:0], 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                out = out[:-1]
                continue
            cur = "/" + "/".join([*out, part])
            try:
                link = islnk(lstat(cur).st_mode)
            except OSError:
                link = False
            if not link:
                out.append(part)
                continue
            links += 1
            if links > 40:
                raise OSError("too many levels of symbolic links")
            target = readlink(cur)
            out = [] if target.startswith("/") else out
            todo.extend(target.split("/")[::-1])
        return "/" + "/".join(out)

    def inside(p, dirs, any=any):
        return p is None or any(p == d or p.startswith(d + "/") for d in dirs)

    def is_dir(p, st=os.stat, isdir=stat.S_ISDIR):
        try:
            return isdir(st(p).st_mode)
        except OSError:
            return False

    def judge(ev, a, b=b):
        if ev.startswith(banned):
            return f"{ev} is not allowed"
        if ev == "import" and text(a[0]) in no_import:
            return f"importing {text(a[0])} is not allowed"
        if ev == "open":
            p, mode, flags = resolve(a[0]), a[1], a[2]
            if b["type"](flags) is b["int"] and flags >= 0:
                write = flags & write_flags
            else:
                write = b["any"](ch in (text(mode) or "") for ch in "wax+")
            if write:
                writes[0] += 1
                if not inside(p, (tmp,)):
                    return f"writing {p} outside the sandbox directory"
                if writes[0] > max_writes:
                    return f"more than {max_writes} files created or opened for writing"
            elif not inside(p, roots):
                return f"reading {p} outside the standard library"
            elif p is not None and not inside(p, (tmp,)) and is_dir(p):
                return f"opening the directory {p}"
        if ev in ("os.listdir", "os.scandir") and not inside(p := resolve(a[0]), roots):
            return f"listing {p} outside the standard library"
        if ev in mutate:
            if ev in creating:
                writes[0] += 1
                if writes[0] > max_writes:
                    return f"more than {max_writes} files created or opened for writing"
            for x in a:
                is_path = b["issubclass"](b["type"](x), (b["str"], b["bytes"]))
                if is_path and not inside(p := resolve(x), (tmp,)):
                    return f"{ev} on {p} outside the sandbox directory"
        return None

    def hook(ev, a, write=os.write, _exit=os._exit, Exception=Exception, BaseException=BaseException):
        try:
            why = judge(ev, a)
        except Exception:
            why = f"{ev} with arguments the sandbox cannot check"
        if why:
            try:
                write(fd, _line(status="forbidden", event=ev, reason=why))
                for s in streams:
                    s.flush()
            except BaseException:
                pass
            _exit(86)

    sys.addaudithook(hook)


def run(src, cfg):
    linecache.cache["<program>"] = (len(src), None, src.splitlines(True), "<program>")
    try:
        code = compile(src, "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, g)
        f = g.get("solution")
        if not callable(f):
            return {"status": "error", "reason": "the program defines no solution() function"}
        v = f()
        ans = None if v is None else (repr(v) if isinstance(v, float) else str(v))[:1000]
        return {"status": "ok", "answer": ans, "type": type(v).__name__, "reason": ""}
    except MemoryError:
        return {"status": "memory", "reason": f"out of memory (address space limit {cfg['mem']} MB)"}
    except BaseException as e:  # the traceback shows the program's frames only: this file is not readable
        frames = traceback.StackSummary.extract(traceback.walk_tb(e.__traceback__), lookup_lines=False)
        mine = traceback.StackSummary.from_list([f for f in frames if f.filename == "<program>"][-4:])
        sys.stderr.write("".join(["Traceback (most recent call last):\n", *mine.format()]))
        sys.stderr.write("".join(traceback.format_exception_only(e)))
        where = f" (line {mine[-1].lineno})" if mine else ""
        return {"status": "error", "reason": f"{type(e).__name__}: {e}"[:300] + where}


def main():
    cfg = json.loads(sys.argv[1])
    del sys.argv[1:]
    fd, streams = cfg["fd"], (sys.stdout, sys.stderr)
    src = sys.stdin.buffer.read().decode("utf-8", "replace")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for m in cfg["preload"]:  # importable after the drop even where that uid cannot read the stdlib
        with contextlib.suppress(ImportError):
            __import__(m)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: exec can never gain privileges
    except Exception:
        pass
    for m in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[m]
    for name, pair in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), tuple(pair))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file limit fails with EFBIG instead

    def on_cpu(*_):
        os.write(fd, _line(status="timeout", reason=f"CPU time limit ({cfg['cpu']} s) exceeded"))
        os._exit(124)

    signal.signal(signal.SIGXCPU, on_cpu)
    if (u := cfg["uid"]) is not None:
        os.setgroups([])
        os.setresgid(u, u, u)
        os.setresuid(u, u, u)
        if os.getresuid() != (u, u, u) or os.getresgid() != (u, u, u) or os.getgroups():
            raise SystemExit("sandbox: privilege drop failed")
    if cfg["audit"]:
        tmp = os.path.realpath(os.getcwd())
        extra = (tmp, "/usr/share/zoneinfo", "/dev/null", "/dev/urandom")
        guard(tmp, tuple(os.path.realpath(p) for p in sys.path if p) + extra, cfg["writes"], fd, streams)
    out = run(src, cfg)
    for s in streams:
        s.flush()
    os.write(fd, _line(**out))
    os._exit(0)


if __name__ == "__main__":
    main()
