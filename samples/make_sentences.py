"""Write ``sentences.txt``: real English sentences from the Python standard library's docstrings.

Text data for sequence models without a download (``--data samples/sentences.txt
--preprocess "tokenizer=tokenizer.json max_length=128"``): the first sentence of the
docstring of a fixed list of standard-library modules and of their public functions,
classes and methods, taken round-robin over the modules, de-duplicated. The source files are parsed with
:mod:`ast` (nothing is imported), so the output depends only on the Python version's
standard library (``sentences.txt`` was made with the Python named in its README row).

    python samples/make_sentences.py            # writes samples/sentences.txt
    python samples/make_sentences.py -n 300 -o other.txt
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from pathlib import Path

# Pure-Python modules with prose docstrings, in the order they are read.
MODULES = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.locks", "asyncio.queues",
    "asyncio.streams", "asyncio.tasks", "base64", "bdb", "bisect", "calendar", "cmd", "code", "codecs",
    "collections", "colorsys", "concurrent.futures._base", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "_pydecimal", "difflib", "dis", "doctest", "email.message",
    "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html", "html.parser", "http.client",
    "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress", "json", "json.decoder",
    "json.encoder", "keyword", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox",
    "mimetypes", "modulefinder", "netrc", "ntpath", "numbers", "opcode", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath",
    "pprint", "profile", "pstats", "pydoc", "queue", "quopri", "random", "reprlib", "rlcompleter",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "statistics", "string", "subprocess", "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing",
    "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "webbrowser", "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport",
)

_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[A-Z(]|$)")
_WORD = re.compile(r"[A-Za-z]+")
# Code, markup, doctest and signature lines are not prose.
_NOT_PROSE = re.compile(r">>>|::|`|\*\*|=|\{|\}|\[|\]|<|>|\\|\$|#|\w\(|\|")


def first_sentence(docstring: str) -> str | None:
    """The first sentence of ``docstring``'s first paragraph, or None when it is not prose."""
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    match = _SENTENCE_END.search(text)
    if match is None:
        return None
    sentence = text[: match.end()]
    words = _WORD.findall(sentence)
    if not (5 <= len(words) <= 60) or not sentence[0].isupper() or not sentence.isascii():
        return None
    if _NOT_PROSE.search(sentence) or len(sentence) > 400:
        return None
    return sentence


def docstrings(module: str) -> list[str]:
    """Docstrings of ``module``'s source: the module, then its public functions, classes and
    methods (breadth-first: top-level definitions before nested ones)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found = [ast.get_docstring(tree)]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            found.append(ast.get_docstring(node))
    return [d for d in found if d]


def collect(count: int) -> list[str]:
    """``count`` distinct sentences, taken round-robin over :data:`MODULES` (the first
    sentence of each module, then the second of each, …) so that every module contributes."""
    per_module: list[list[str]] = []
    for module in MODULES:
        found = [s for s in map(first_sentence, docstrings(module)) if s is not None]
        per_module.append(found)
    seen: set[str] = set()
    sentences: list[str] = []
    for round_ in range(max(map(len, per_module), default=0)):
        for found in per_module:
            if round_ < len(found) and found[round_].lower() not in seen:
                seen.add(found[round_].lower())
                sentences.append(found[round_])
                if len(sentences) == count:
                    return sentences
    return sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=400, help="number of sentences (default 400)")
    parser.add_argument("-o", default=str(Path(__file__).with_name("sentences.txt")), help="output file")
    args = parser.parse_args()
    sentences = collect(args.n)
    Path(args.o).write_text("\n".join(sentences) + "\n", encoding="utf-8")
    print(f"wrote {len(sentences)} sentences ({sum(map(len, sentences)) + len(sentences)} bytes) to {args.o}")


if __name__ == "__main__":
    main()
