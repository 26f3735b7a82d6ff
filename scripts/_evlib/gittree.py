"""Git trees read from raw objects (what `git cat-file --batch` prints): the `.dvc` files and
`dvc.lock` files of a tree, and the DVC outputs they record.

No git process here: the caller hands in a get(object id) -> (id, type, bytes) | None
(revfile's long-lived `cat-file --batch`, or listcold's objects read in waves), so that
both read a revision's outputs by the same rules.
"""

from __future__ import annotations

from .dvcmeta import Out, is_meta_file, parse_outs

# Never descend into these top-level folders looking for .dvc files: DVC's own and git's.
SKIP_TOP = frozenset({".dvc", ".git"})


def tree_entries(data: bytes, width: int):
    """(mode, name, object id hex) of each entry of a raw git tree object; width is the
    object id's size in bytes (20 for sha1, 32 for sha256 repositories)."""
    i, n = 0, len(data)
    while i < n:
        sp = data.index(b" ", i)
        nul = data.index(b"\0", sp)
        oid = data[nul + 1:nul + 1 + width].hex()
        yield data[i:sp].decode(), data[sp + 1:nul].decode("utf-8", "surrogateescape"), oid
        i = nul + 1 + width


def subtrees(tree: str, data: bytes, prefix: str) -> list[tuple[str, str]]:
    """(object id, prefix) of each subtree meta_files descends into from this tree."""
    return [(oid, f"{prefix}{name}/") for mode, name, oid in tree_entries(data, len(tree) // 2)
            if mode == "40000" and not (prefix == "" and name in SKIP_TOP)]


def meta_files(tree: str, prefix: str, get, memo: dict, got=None) -> list[tuple[str, str]]:
    """(repo path, blob id) of every .dvc file and dvc.lock under tree, memoised in memo
    by (tree, prefix): the same tree under another prefix names other paths."""
    key = tree + "\0" + prefix
    if key in memo:
        return memo[key]
    got = got or get(tree)
    found: list[tuple[str, str]] = []
    if got and got[1] == "tree":
        for mode, name, oid in tree_entries(got[2], len(tree) // 2):
            path = prefix + name
            if mode == "40000":
                if not (prefix == "" and name in SKIP_TOP):
                    found += meta_files(oid, path + "/", get, memo)
            elif mode in ("100644", "100755") and is_meta_file(path):
                found.append((path, oid))
    memo[key] = found
    return found


def outs_of(metas: list[tuple[str, str]], text_of, memo: dict) -> dict[str, Out]:
    """The outputs the meta files (path, blob id) record, by path (a later file's entry for
    the same path wins); text_of(blob id) is the blob's text ('' if unreadable). Parsed once
    per (blob, path) in memo. Paths that would leave the repository are dropped."""
    outs: dict[str, Out] = {}
    for path, blob_id in metas:
        key = (blob_id, path)
        if key not in memo:
            memo[key] = parse_outs(text_of(blob_id), path)
        for o in memo[key]:
            if inside_repo(o.path):
                outs[o.path] = o
    return outs


def inside_repo(path: str) -> bool:
    """A repo-relative path that stays inside the repository (never trust a .dvc's path)."""
    return bool(path) and not path.startswith("/") and ".." not in path.split("/") \
        and path != "."
