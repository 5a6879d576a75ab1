"""The vector index behind one small interface: pgvector (embedded default) or Qdrant.

Each point holds what hybrid retrieval needs, the dense vector and the BM25 sparse vector, plus
the hashes that make ingestion incremental: the index itself is the record of what is indexed.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from assets.collections import QdrantSpec
from assets.extract import ACL_KEY, parse_groups
from assets.sparse import DIMENSIONS, SparseVector

Filters = Mapping[str, str | Sequence[str]]
# The caller's groups for document access lists (None: no restriction); see VectorIndex.dense_search.
Groups = Sequence[str] | None
_SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
BULK_LOAD_ROWS = 2000
# How often one statement or write is tried when the connection breaks under it (PostgreSQL restarted or failed
# over), and the pause before the first retry (doubled each time): a fast restart takes a few seconds.
RECONNECT_ATTEMPTS = 4
RECONNECT_PAUSE_S = 0.5
# How often a backend checks that its client is still there while it runs a statement or waits for a lock: the
# backend of a run worker killed with -9 ends within this, instead of finishing (and holding the locks of) a long
# write first. Linux, macOS and the BSDs support it; elsewhere the server refuses it and backends keep the default.
CLIENT_CHECK_INTERVAL = "2s"
T = TypeVar("T")


@dataclass(frozen=True)
class IndexPoint:
    chunk_id: str
    doc_id: str
    doc_hash: str
    chunk_no: int
    chunk_hash: str
    text: str
    metadata: dict[str, str]
    dense: NDArray[np.float32]
    sparse: SparseVector


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: str
    doc_id: str
    doc_hash: str
    chunk_hash: str


class VectorIndex(ABC):
    """What ingestion and retrieval need from a vector store, and nothing more."""

    @abstractmethod
    def ensure_collection(self, collection: str, dimension: int) -> None:
        """Create the collection if missing. One holding vectors of another dimension (the embedding model
        was changed) is dropped: its vectors cannot be searched with the new model, and every document
        is re-embedded by the run that follows, since the model is part of each document's hash."""

    @abstractmethod
    def stored_chunks(self, collection: str, doc_ids: Sequence[str] | None = None) -> list[StoredChunk]:
        """Ids and hashes of the stored chunks (of the given documents, or all)."""

    @abstractmethod
    def vectors_by_chunk_hash(self, collection: str, doc_ids: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        """Stored dense vectors of these documents keyed by chunk hash, so unchanged text is not re-embedded."""

    @abstractmethod
    def write(self, collection: str, upserts: Sequence[IndexPoint], delete_ids: Sequence[str]) -> None:
        """Upsert points and delete ids as one unit: pgvector commits both or neither."""

    @abstractmethod
    def count(self, collection: str) -> int: ...

    @abstractmethod
    def document_chunks(self, collection: str, doc_id: str, groups: Groups = None) -> list[Hit]:
        """The stored chunks of one document in order (score 0): what a source link shows."""

    @abstractmethod
    def dense_search(
        self, collection: str, vector: NDArray[np.float32], limit: int, filters: Filters | None = None, groups: Groups = None
    ) -> list[Hit]:
        """Nearest chunks by cosine. `groups` (every search takes it): None reads every chunk; a sequence
        reads only chunks without an access list or whose access list names one of these groups, filtered
        inside the search, before any ranking, so a chunk the caller may not read is never counted."""

    @abstractmethod
    def sparse_search(
        self, collection: str, terms: Sequence[int], limit: int, filters: Filters | None = None, groups: Groups = None
    ) -> list[Hit]:
        """BM25: stored saturated term frequencies times the terms' IDF in this collection."""

    @abstractmethod
    def drop_collection(self, collection: str) -> None: ...

    @abstractmethod
    def versions(self, collections: Sequence[str]) -> dict[str, str]:
        """Each collection's index version: changed by every write and drop (a reindex, a deleted document, an
        ACL change rewriting chunks' groups), never repeated, shared by every process on this index. Caches of
        retrievals and answers (query_engine/cache.py) key on it. A collection never written has '0'."""

    @abstractmethod
    def close(self) -> None: ...

    def document_hashes(self, collection: str) -> dict[str, str]:
        """doc_id → doc_hash of what is indexed. A document whose chunks disagree (an interrupted write
        to a store without transactions) maps to '' so the next run rewrites it."""
        hashes: dict[str, str] = {}
        for chunk in self.stored_chunks(collection):
            previous = hashes.setdefault(chunk.doc_id, chunk.doc_hash)
            if previous != chunk.doc_hash:
                hashes[chunk.doc_id] = ""
        return hashes


# pgvector builds an HNSW graph several times faster while it fits in maintenance_work_mem (past it, it writes
# to disk as it goes and says so): per element its vector, its layer-0 and upper-layer neighbour lists (m = 16)
# and bookkeeping. 100,000 896-float vectors made a 391 MB graph, 4.1 KB each against 3.6 KB of vector.
HNSW_BYTES_OVER_VECTOR = 600
HNSW_MEMORY_FLOOR_MB = 256
# Of this machine's memory, at most (the embedded PostgreSQL runs here; the build shares it with the API and the
# model). A separate database server keeps its own maintenance_work_mem where that is larger.
HNSW_MEMORY_SHARE = 0.25


def hnsw_build_memory_mb(rows: int, dimension: int, total_mb: float | None = None) -> int:
    """maintenance_work_mem for building the graph of `rows` vectors in one go."""
    if total_mb is None:
        import psutil

        total_mb = psutil.virtual_memory().total / 2**20
    graph_mb = rows * (4 * dimension + HNSW_BYTES_OVER_VECTOR) * 1.1 / 2**20
    return int(max(HNSW_MEMORY_FLOOR_MB, min(graph_mb, total_mb * HNSW_MEMORY_SHARE)))


def bm25_idf(total: int, document_frequency: int) -> float:
    """BM25's IDF, the same formula as Qdrant's IDF modifier."""
    return math.log(1 + (total - document_frequency + 0.5) / (document_frequency + 0.5))


# A term found in more than this share of the chunks scores but does not select candidates.
COMMON_TERM_SHARE = 0.03


def candidate_terms(frequencies: Mapping[int, int], total: int, limit: int, common_share: float = COMMON_TERM_SHARE) -> list[int]:
    """The query terms whose chunks get scored. Scoring every chunk that holds a very common term
    ("the", "error", "payment") is what makes BM25 in Postgres slow at 100,000 chunks (1.2 s a query),
    and such a chunk ranks high only when it also holds a rarer query term. So the rare terms select;
    when they select fewer than `limit` chunks, the next rarest terms join until the list can fill.
    On 100,000 Zipf-text chunks (`kb bench query`), a share of 0.03 kept 0.988 of the exact top 10 at
    p50 47 ms against 1,064 ms for exact scoring (0.05: 0.995, 108 ms; 0.02: 0.972, 39 ms)."""
    ordered = sorted((df, term) for term, df in frequencies.items() if df > 0)
    selected, selected_df = [], 0
    for df, term in ordered:
        if df > common_share * total and selected_df >= limit:
            break
        selected.append(term)
        selected_df += df
    return selected


def stored_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as the index stores it: the access list as a list of groups, so both backends filter on it."""
    stored = dict(metadata)
    if ACL_KEY in stored:
        stored[ACL_KEY] = parse_groups(stored[ACL_KEY])
    return stored


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# The HNSW graph of every collection. ef_construction 128 (pgvector's default is 64) measured on 100,000 vectors grown
# from real passages' embeddings (README, "Floor, peer and recall"), at the hnsw.ef_search of 200 queries use:
# recall@10 against exact search 0.974 -> 0.998, dense search p50 2.4 -> 3.4 ms, graph build 23 -> 43 s;
# m 24 gave no more recall at a slower build.
HNSW_INDEX = "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 128)"


class PgVectorIndex(VectorIndex):
    """One table per collection in PostgreSQL with pgvector: HNSW on the dense vector, a sparsevec of
    BM25 weights, and the term ids in a GIN-indexed array to count document frequencies."""

    def __init__(self, url: str, max_connections: int = 8, common_term_share: float = COMMON_TERM_SHARE) -> None:
        """`common_term_share`: see `candidate_terms`; 1.0 scores every chunk holding any query term (exact BM25)."""
        self.common_term_share = common_term_share
        from psycopg_pool import ConnectionPool

        # A pool, not one shared connection: API requests run in threads, and a single connection would
        # serialize their searches (and the sparse search that runs while the query is embedded). Every
        # connection is checked (one empty round trip) when it leaves the pool: after a PostgreSQL restart the
        # idle ones are dead, and without the check each of them would fail one request or ingestion step.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=ConnectionPool.check_connection,
            open=True,
        )
        self._pool.wait()  # an unreachable database fails here, not at the first query

    @staticmethod
    def _configure(conn: Any) -> None:
        from pgvector.psycopg import register_vector

        # Before register_vector, which needs the type; on every new connection, so a fresh database works.
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        # Enough HNSW candidates for the fused top-k, and iterative scans so filtered queries still fill k.
        conn.execute("SET hnsw.ef_search = 200")
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.execute("SET maintenance_work_mem = '256MB'")
        PgVectorIndex._ensure_versions(conn)
        from psycopg import errors

        try:
            conn.execute(f"SET client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'")
        except (errors.InvalidParameterValue, errors.UndefinedObject):  # no kernel support, or PostgreSQL < 14
            pass

    @staticmethod
    def _ensure_versions(conn: Any) -> None:
        """The table of index versions. A version is a random UUID, not a counter: a counter starts again in a
        recreated or restored database, and a cache shared with the old one (Redis) would serve its entries."""
        row = conn.execute("SELECT to_regclass('kb_index_versions')").fetchone()
        if row and row[0]:
            return
        with conn.transaction():
            # Several processes open their first connections at once (API replicas, Dagster steps).
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('kb-index-versions', 0))")
            conn.execute("CREATE TABLE IF NOT EXISTS kb_index_versions (collection text PRIMARY KEY, version uuid NOT NULL)")

    @staticmethod
    def _bump_version(cur: Any, collection: str) -> None:
        cur.execute(
            """INSERT INTO kb_index_versions VALUES (%s, gen_random_uuid())
               ON CONFLICT (collection) DO UPDATE SET version = EXCLUDED.version""",
            (collection,),
        )

    def versions(self, collections: Sequence[str]) -> dict[str, str]:
        rows = self._rows("SELECT collection, version FROM kb_index_versions WHERE collection = ANY(%s)", (list(collections),))
        found = {name: str(version) for name, version in rows}
        return {c: found.get(c, "0") for c in collections}

    def _on_connection(self, work: Callable[[Any], T]) -> T:
        """`work` on a pooled connection; run again on a fresh one when the connection breaks under it (the server
        restarted, crashed or failed over), so a restart in the middle of an ingestion run or under API traffic
        costs a pause, not a failed run. Every caller's work may run twice: reads, DDL with IF NOT EXISTS, and
        `write`, one transaction of upserts and deletes by id that committed whole or not at all (a connection
        lost during COMMIT leaves which of the two unknown; writing the same points again gives the same index).
        An error of the statement itself (a full disk, a constraint) is raised at once."""
        import psycopg
        from psycopg import errors

        pause = RECONNECT_PAUSE_S
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            conn = None
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                lost = conn is not None and (conn.broken or isinstance(exc, errors.AdminShutdown | errors.CrashShutdown))
                if not lost or attempt == RECONNECT_ATTEMPTS:
                    raise
            time.sleep(pause)  # the pool reconnects meanwhile; its getconn waits up to 30 s for the server
            pause *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """One statement on a pooled connection; its rows (none for statements without a result)."""

        def run(conn: Any) -> list[tuple[Any, ...]]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

        return self._on_connection(run)

    @staticmethod
    def _table(collection: str) -> str:
        if not _SAFE_NAME.match(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        return f"kb_chunks_{collection}"

    @staticmethod
    def _df_table(collection: str) -> str:
        return f"{PgVectorIndex._table(collection)}_df"

    def ensure_collection(self, collection: str, dimension: int) -> None:
        self._on_connection(lambda conn: self._ensure_collection(conn, collection, dimension))

    def _ensure_collection(self, conn: Any, collection: str, dimension: int) -> None:
        t, df = self._table(collection), self._df_table(collection)
        with conn.transaction():
            stored = conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'embedding'", (t,)
            ).fetchone()
            if stored and stored[0] != dimension:
                conn.execute(f"DROP TABLE {t}, {df}")
                self._bump_version(conn, collection)
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {t} (
                    id uuid PRIMARY KEY, doc_id text NOT NULL, doc_hash text NOT NULL, chunk_no int NOT NULL,
                    chunk_hash text NOT NULL, text text NOT NULL, metadata jsonb NOT NULL,
                    embedding vector({int(dimension)}) NOT NULL, sparse sparsevec({DIMENSIONS}) NOT NULL,
                    terms int[] NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"""
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_doc ON {t} (doc_id)")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_hnsw ON {t} {HNSW_INDEX}")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_terms ON {t} USING gin (terms)")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_meta ON {t} USING gin (metadata jsonb_path_ops)")
            # Document frequency per term, kept in step with the chunks by every write: BM25's IDF at query
            # time is then one primary-key lookup instead of a count over the GIN index per query term.
            # Term -1 counts the chunks themselves (real term ids are non-negative).
            row = conn.execute("SELECT to_regclass(%s)", (df,)).fetchone()
            if not (row and row[0]):
                conn.execute(f"CREATE TABLE {df} (term int PRIMARY KEY, df int NOT NULL)")
                conn.execute(f"INSERT INTO {df} SELECT term, count(*) FROM {t}, unnest(terms || -1) AS term GROUP BY term")

    def stored_chunks(self, collection: str, doc_ids: Sequence[str] | None = None) -> list[StoredChunk]:
        sql = f"SELECT id::text, doc_id, doc_hash, chunk_hash FROM {self._table(collection)}"
        rows = (
            self._rows_if_exists(sql)
            if doc_ids is None
            else self._rows_if_exists(sql + " WHERE doc_id = ANY(%s)", (list(doc_ids),))
        )
        return [StoredChunk(*row) for row in rows]

    def _rows_if_exists(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of a query on a collection's tables; none when the collection was never created."""
        from psycopg.errors import UndefinedTable

        try:
            return self._rows(sql, params)
        except UndefinedTable:
            return []

    def vectors_by_chunk_hash(self, collection: str, doc_ids: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        if not doc_ids:
            return {}
        rows = self._rows_if_exists(
            f"SELECT chunk_hash, embedding FROM {self._table(collection)} WHERE doc_id = ANY(%s)", (list(doc_ids),)
        )
        return {h: np.asarray(v.to_numpy(), dtype=np.float32) for h, v in rows}

    def write(self, collection: str, upserts: Sequence[IndexPoint], delete_ids: Sequence[str]) -> None:
        self._on_connection(lambda conn: self._write(conn, collection, upserts, delete_ids))

    def _write(self, conn: Any, collection: str, upserts: Sequence[IndexPoint], delete_ids: Sequence[str]) -> None:
        from pgvector import SparseVector as PgSparse
        from psycopg.types.json import Jsonb

        t, df = self._table(collection), self._df_table(collection)
        columns = "id, doc_id, doc_hash, chunk_no, chunk_hash, text, metadata, embedding, sparse, terms"
        with conn.transaction(), conn.cursor() as cur:
            # One writer per collection at a time (two runs of it at once: a webhook run next to the schedule, or
            # several run pods): the document frequencies below are read and updated relative to the rows, which
            # would drift if two writes interleaved. A transaction lock: a writer that dies drops it with its
            # transaction, so nothing is left to clean up.
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"kb-index:{t}",))
            self._bump_version(cur, collection)  # committed with the rows, so no reader sees new rows under the old one
            cur.execute(f"CREATE TEMP TABLE kb_staging (LIKE {t} INCLUDING DEFAULTS) ON COMMIT DROP")
            with cur.copy(f"COPY kb_staging ({columns}) FROM STDIN") as copy:
                for p in upserts:
                    sparse = PgSparse(dict(zip(p.sparse.indices, p.sparse.values, strict=True)), DIMENSIONS)
                    meta = Jsonb(stored_metadata(p.metadata))
                    copy.write_row((p.chunk_id, p.doc_id, p.doc_hash, p.chunk_no, p.chunk_hash, p.text, meta,
                                    p.dense, sparse, list(p.sparse.indices)))  # fmt: skip
            # Rows about to be replaced or deleted leave the document frequencies first.
            cur.execute(
                f"""UPDATE {df} SET df = {df}.df - gone.n FROM (
                      SELECT term, count(*) AS n FROM {t}, unnest(terms || -1) AS term
                      WHERE id = ANY(%s::uuid[]) OR id IN (SELECT id FROM kb_staging) GROUP BY term) AS gone
                    WHERE {df}.term = gone.term""",
                (list(delete_ids),),
            )
            if delete_ids:
                cur.execute(f"DELETE FROM {t} WHERE id = ANY(%s::uuid[])", (list(delete_ids),))
            if not upserts:
                return
            # Inserting row by row into an HNSW graph dominates large loads; for a bulk load into a table
            # no bigger than the load, building the graph once afterwards is several times faster.
            bulk = len(upserts) >= BULK_LOAD_ROWS
            rebuild = bulk and len(upserts) >= (cur.execute(f"SELECT count(*) FROM {t}").fetchone() or (0,))[0]
            if rebuild:
                cur.execute(f"DROP INDEX IF EXISTS {t}_hnsw")
            cur.execute(
                f"""INSERT INTO {t} ({columns}) SELECT {columns} FROM kb_staging
                    ON CONFLICT (id) DO UPDATE SET doc_id = EXCLUDED.doc_id, doc_hash = EXCLUDED.doc_hash,
                      chunk_no = EXCLUDED.chunk_no, chunk_hash = EXCLUDED.chunk_hash, text = EXCLUDED.text,
                      metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding, sparse = EXCLUDED.sparse,
                      terms = EXCLUDED.terms, updated_at = now()"""
            )
            cur.execute(
                f"""INSERT INTO {df} SELECT term, count(*) FROM kb_staging, unnest(terms || -1) AS term GROUP BY term
                    ON CONFLICT (term) DO UPDATE SET df = {df}.df + EXCLUDED.df"""
            )
            if rebuild:
                rows = (cur.execute(f"SELECT count(*) FROM {t}").fetchone() or (0,))[0]
                # Only ever raised for this build: an operator's larger setting stays.
                setting = cur.execute("SELECT setting::bigint / 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'")
                current_mb = (setting.fetchone() or (0,))[0]
                wanted_mb = max(current_mb, hnsw_build_memory_mb(rows, len(upserts[0].dense)))
                cur.execute(f"SET LOCAL maintenance_work_mem = '{wanted_mb}MB'")
                cur.execute(f"CREATE INDEX {t}_hnsw ON {t} {HNSW_INDEX}")

    def count(self, collection: str) -> int:
        rows = self._rows_if_exists(f"SELECT count(*) FROM {self._table(collection)}")
        return int(rows[0][0]) if rows else 0

    def document_chunks(self, collection: str, doc_id: str, groups: Groups = None) -> list[Hit]:
        where, params = self._where(None, groups)
        rows = self._rows_if_exists(
            f"SELECT id, doc_id, 0.0, text, metadata FROM {self._table(collection)} WHERE doc_id = %s{where} ORDER BY chunk_no",
            (doc_id, *params),
        )
        return self._hits(rows)

    @staticmethod
    def _where(filters: Filters | None, groups: Groups = None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for key, value in (filters or {}).items():
            clauses.append("metadata->>%s = ANY(%s)")
            params.extend([key, _as_list(value)])
        if groups is not None:
            clauses.append(f"(NOT metadata ? '{ACL_KEY}' OR metadata->'{ACL_KEY}' ?| %s::text[])")
            params.append(list(groups))
        return (" AND " + " AND ".join(clauses)) if clauses else "", params

    def _hits(self, rows: Sequence[tuple[Any, ...]]) -> list[Hit]:
        return [Hit(str(r[0]), r[1], float(r[2]), r[3], r[4]) for r in rows]

    def dense_search(self, collection: str, vector: NDArray[np.float32], limit: int, filters: Filters | None = None,
                     groups: Groups = None) -> list[Hit]:  # fmt: skip
        where, params = self._where(filters, groups)
        rows = self._rows_if_exists(
            f"""SELECT id, doc_id, 1 - (embedding <=> %s) AS score, text, metadata FROM {self._table(collection)}
                WHERE true{where} ORDER BY embedding <=> %s LIMIT %s""",
            [vector, *params, vector, limit],
        )
        return self._hits(rows)

    def sparse_search(self, collection: str, terms: Sequence[int], limit: int, filters: Filters | None = None,
                      groups: Groups = None) -> list[Hit]:  # fmt: skip
        from pgvector import SparseVector as PgSparse

        if not terms:
            return []
        frequencies = dict(
            self._rows_if_exists(f"SELECT term, df FROM {self._df_table(collection)} WHERE term = ANY(%s)", ([-1, *terms],))
        )
        total = int(frequencies.pop(-1, 0))
        weights = {int(term): bm25_idf(total, int(df)) for term, df in frequencies.items() if df > 0}
        if not weights:
            return []
        query = PgSparse(weights, DIMENSIONS)
        where, params = self._where(filters, groups)
        rows = self._rows_if_exists(
            f"""SELECT id, doc_id, -(sparse <#> %s) AS score, text, metadata FROM {self._table(collection)}
                WHERE terms && %s::int[]{where} ORDER BY sparse <#> %s LIMIT %s""",
            [query, candidate_terms(frequencies, total, limit, self.common_term_share), *params, query, limit],
        )
        return self._hits(rows)

    def drop_collection(self, collection: str) -> None:
        def drop(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {self._table(collection)}, {self._df_table(collection)}")
                self._bump_version(cur, collection)

        self._on_connection(drop)

    def close(self) -> None:
        self._pool.close()


class QdrantIndex(VectorIndex):
    """A Qdrant collection per knowledge-base collection, through LlamaIndex's `QdrantVectorStore`: a named dense
    vector plus a sparse vector with Qdrant's IDF modifier, which turns the stored BM25 term weights into BM25
    scores. Points are written and searched by the store (its payload: the node as LlamaIndex stores it, our
    chunk fields as node metadata); collections are created here, with the layout from collections.yaml, and bulk
    reads page through the store's client."""

    DENSE = "dense"
    SPARSE = "bm25"
    # One point per knowledge-base collection, its payload the index version (Qdrant has no transactions:
    # the version changes after a write's points, so a reader may cache a result of the new points under the
    # old version for the moments in between; the next write's version supersedes it).
    VERSIONS = "kb_index_versions"

    def __init__(
        self, url: str | None = None, path: Path | None = None, api_key: str | None = None,
        layouts: Mapping[str, QdrantSpec] | None = None,
    ) -> None:  # fmt: skip
        from qdrant_client import QdrantClient

        if bool(url) == bool(path):
            raise ValueError("QdrantIndex needs exactly one of url (server) or path (local mode)")
        self._client = QdrantClient(url=url, api_key=api_key) if url else QdrantClient(path=str(path))
        self._layouts = dict(layouts or {})
        self._stores: dict[str, Any] = {}
        self._write_lock = threading.Lock()
        # The BM25 weights of the points being written, in order: computed at ingestion from the chunk's text with
        # its path and split identifiers (assets/sparse.py), which the store's per-text encoder callback cannot see.
        self._pending_sparse: deque[SparseVector] = deque()

    def _store(self, collection: str) -> Any:
        from llama_index.vector_stores.qdrant import QdrantVectorStore

        store = self._stores.get(collection)
        if store is None:
            layout = self._layouts.get(collection, QdrantSpec())
            store = QdrantVectorStore(
                collection_name=collection, client=self._client, enable_hybrid=True, batch_size=256,
                dense_vector_name=self.DENSE, sparse_vector_name=self.SPARSE,
                sparse_doc_fn=self._stored_sparse, sparse_query_fn=_term_query,
                shard_number=layout.shard_number, replication_factor=layout.replication_factor,
            )  # fmt: skip
            self._stores[collection] = store
        return store

    def _stored_sparse(self, texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
        vectors = [self._pending_sparse.popleft() for _ in texts]
        return [list(map(int, v.indices)) for v in vectors], [list(map(float, v.values)) for v in vectors]

    def ensure_collection(self, collection: str, dimension: int) -> None:
        from qdrant_client import models

        if self._client.collection_exists(collection):
            vectors = self._client.get_collection(collection).config.params.vectors
            if isinstance(vectors, dict) and vectors[self.DENSE].size == dimension:
                return
            self._client.delete_collection(collection)
            self._bump_version(collection)
        layout = self._layouts.get(collection, QdrantSpec())
        self._client.create_collection(
            collection,
            vectors_config={self.DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)},
            sparse_vectors_config={self.SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            shard_number=layout.shard_number,
            replication_factor=layout.replication_factor,
        )
        self._client.create_payload_index(collection, "doc_id", models.PayloadSchemaType.KEYWORD)
        self._stores.pop(collection, None)  # a store caches whether its collection exists

    def _scroll(self, collection: str, flt: Any, with_vectors: Any) -> list[Any]:
        if not self._client.collection_exists(collection):
            return []
        points, offset = [], None
        while True:
            batch, offset = self._client.scroll(
                collection, scroll_filter=flt, limit=1000, offset=offset, with_payload=True, with_vectors=with_vectors
            )
            points.extend(batch)
            if offset is None:
                return points

    @staticmethod
    def _doc_filter(doc_ids: Sequence[str]) -> Any:
        from qdrant_client import models

        return models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))])

    def stored_chunks(self, collection: str, doc_ids: Sequence[str] | None = None) -> list[StoredChunk]:
        if doc_ids is not None and not doc_ids:
            return []
        flt = None if doc_ids is None else self._doc_filter(doc_ids)
        return [
            StoredChunk(str(p.id), p.payload["doc_id"], p.payload["doc_hash"], p.payload["chunk_hash"])
            for p in self._scroll(collection, flt, with_vectors=False)
        ]

    def vectors_by_chunk_hash(self, collection: str, doc_ids: Sequence[str]) -> dict[str, NDArray[np.float32]]:
        if not doc_ids:
            return {}
        points = self._scroll(collection, self._doc_filter(doc_ids), with_vectors=[self.DENSE])
        return {p.payload["chunk_hash"]: np.asarray(p.vector[self.DENSE], dtype=np.float32) for p in points}

    def write(self, collection: str, upserts: Sequence[IndexPoint], delete_ids: Sequence[str]) -> None:
        # Upserts land before deletes: an interrupted run leaves extra points, never missing ones,
        # and document_hashes() flags the document for the next run.
        store = self._store(collection)
        with self._write_lock:
            self._pending_sparse = deque(p.sparse for p in upserts)
            if upserts:
                store.add([_node_of(p) for p in upserts])
            if delete_ids:
                store.delete_nodes(node_ids=list(delete_ids))
        self._bump_version(collection)

    def _bump_version(self, collection: str) -> None:
        from qdrant_client import models

        if not self._client.collection_exists(self.VERSIONS):
            self._client.create_collection(self.VERSIONS, vectors_config={})
        version = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"  # never repeated, across processes too
        payload = {"collection": collection, "version": version}
        point = models.PointStruct(id=self._version_id(collection), vector={}, payload=payload)
        self._client.upsert(self.VERSIONS, points=[point], wait=True)

    @staticmethod
    def _version_id(collection: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kb-index-version:{collection}"))

    def versions(self, collections: Sequence[str]) -> dict[str, str]:
        if not collections or not self._client.collection_exists(self.VERSIONS):
            return dict.fromkeys(collections, "0")
        ids = [self._version_id(c) for c in collections]
        found = {p.payload["collection"]: p.payload["version"] for p in self._client.retrieve(self.VERSIONS, ids)}
        return {c: str(found.get(c, "0")) for c in collections}

    def count(self, collection: str) -> int:
        if not self._client.collection_exists(collection):
            return 0
        return int(self._client.count(collection, exact=True).count)

    def document_chunks(self, collection: str, doc_id: str, groups: Groups = None) -> list[Hit]:
        from llama_index.core.vector_stores.utils import metadata_dict_to_node

        selector = self._doc_filter([doc_id])
        if groups is not None:
            selector = type(selector)(must=[*selector.must, self._acl_condition(groups)])
        points = sorted(self._scroll(collection, selector, with_vectors=False), key=lambda p: p.payload["chunk_no"])
        return [_hit_of(metadata_dict_to_node(dict(p.payload)), 0.0) for p in points]

    @staticmethod
    def _acl_condition(groups: Sequence[str]) -> Any:
        """No access list, or one naming any of `groups`."""
        from qdrant_client import models

        key = f"metadata.{ACL_KEY}"
        return models.Filter(
            should=[
                models.IsEmptyCondition(is_empty=models.PayloadField(key=key)),
                models.FieldCondition(key=key, match=models.MatchAny(any=list(groups) or ["\0none"])),
            ]  # fmt: skip
        )

    @classmethod
    def _filter(cls, filters: Filters | None, groups: Groups = None) -> Any:
        from qdrant_client import models

        must: list[Any] = [
            models.FieldCondition(key=f"metadata.{k}", match=models.MatchAny(any=_as_list(v))) for k, v in (filters or {}).items()
        ]
        if groups is not None:
            must.append(cls._acl_condition(groups))
        return models.Filter(must=must) if must else None

    def _query(self, collection: str, query: Any, limit: int, filters: Filters | None, groups: Groups) -> list[Hit]:
        if not self._client.collection_exists(collection):
            return []
        result = self._store(collection).query(query, qdrant_filters=self._filter(filters, groups))
        return [_hit_of(node, float(score)) for node, score in zip(result.nodes, result.similarities, strict=True)]

    def dense_search(self, collection: str, vector: NDArray[np.float32], limit: int, filters: Filters | None = None,
                     groups: Groups = None) -> list[Hit]:  # fmt: skip
        from llama_index.core.vector_stores.types import VectorStoreQuery

        return self._query(collection, VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=limit), limit,
                           filters, groups)  # fmt: skip

    def sparse_search(self, collection: str, terms: Sequence[int], limit: int, filters: Filters | None = None,
                      groups: Groups = None) -> list[Hit]:  # fmt: skip
        from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

        if not terms:
            return []
        # The store encodes a query string with `_term_query`: here, the term ids themselves.
        query = VectorStoreQuery(query_str=" ".join(map(str, terms)), mode=VectorStoreQueryMode.SPARSE,
                                 similarity_top_k=limit, sparse_top_k=limit)  # fmt: skip
        return self._query(collection, query, limit, filters, groups)

    def drop_collection(self, collection: str) -> None:
        if self._client.collection_exists(collection):
            self._client.delete_collection(collection)
        self._stores.pop(collection, None)
        self._bump_version(collection)

    def close(self) -> None:
        self._client.close()


def _term_query(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    """The sparse query of each "query string", which `QdrantIndex.sparse_search` makes of the question's term ids:
    every term weighs 1, and the collection's IDF modifier weighs the terms."""
    indices = [[int(t) for t in text.split()] for text in texts]
    return indices, [[1.0] * len(i) for i in indices]


def _node_of(point: IndexPoint) -> Any:
    """A chunk as the LlamaIndex node the Qdrant store writes: its text, vector, document and our fields."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    fields = {"doc_hash": point.doc_hash, "chunk_no": point.chunk_no, "chunk_hash": point.chunk_hash,
              "metadata": stored_metadata(point.metadata)}  # fmt: skip
    return TextNode(
        id_=point.chunk_id, text=point.text, embedding=point.dense.tolist(), metadata=fields,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=point.doc_id)},
        excluded_embed_metadata_keys=list(fields), excluded_llm_metadata_keys=list(fields),
    )  # fmt: skip


def _hit_of(node: Any, score: float) -> Hit:
    """A node the Qdrant store wrote (its payload parsed by LlamaIndex) as a search hit."""
    return Hit(node.node_id, str(node.ref_doc_id), score, node.get_content(), dict(node.metadata.get("metadata") or {}))
