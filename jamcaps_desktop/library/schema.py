"""The library schema and its forward migrations.

``PRAGMA user_version`` holds the schema version. Each migration moves the schema one version
forward inside a transaction; a library written by a newer app is refused rather than guessed at.

Stable track ids are the spine of the design: a moved or renamed file keeps its row, so everything
later stages attach to a track (analyses, embeddings, captions, proposals with their confidence and
provenance, the write journal) lives in its own table keyed by ``track_id`` with
``ON DELETE CASCADE``, added by a migration of its own.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: tracks, the tags found in them, scan runs and what each scan could not use.
    """
    CREATE TABLE scans (
        id INTEGER PRIMARY KEY,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        roots TEXT NOT NULL,              -- JSON list of the folders scanned
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'completed', 'cancelled', 'interrupted', 'failed')),
        files_seen INTEGER NOT NULL DEFAULT 0,
        added INTEGER NOT NULL DEFAULT 0,
        updated INTEGER NOT NULL DEFAULT 0,
        unchanged INTEGER NOT NULL DEFAULT 0,
        moved INTEGER NOT NULL DEFAULT 0,
        missing INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        ignored INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE tracks (
        id INTEGER PRIMARY KEY,
        path_key BLOB NOT NULL UNIQUE,    -- the absolute path's exact bytes: the lookup key
        path TEXT NOT NULL,               -- the same path as readable text (invalid UTF-8 bytes escaped)
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER,                 -- catches a file replaced by one of the same size and mtime
        fingerprint TEXT,                 -- blake2b of size + sampled content, for move detection
        container TEXT,                   -- mp3, flac, ogg, mp4, wav, aiff, asf, ape, wavpack, ...
        codec TEXT,                       -- mp3, flac, vorbis, opus, aac, alac, pcm_s16le, wmav2, ...
        duration REAL,                    -- seconds
        sample_rate INTEGER,
        channels INTEGER,
        bitrate INTEGER,                  -- bits per second
        bits_per_sample INTEGER,
        tag_formats TEXT,                 -- JSON list of the tag blocks found: id3v2.4, vorbis, mp4, apev2, asf...
        status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'missing')),
        error TEXT,                       -- plain reason when the file could not be read
        added_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        missing_since TEXT,
        scan_id INTEGER REFERENCES scans(id) ON DELETE SET NULL
    );
    CREATE INDEX tracks_fingerprint ON tracks(fingerprint);
    CREATE INDEX tracks_path ON tracks(path);
    CREATE INDEX tracks_status ON tracks(status);

    CREATE TABLE track_tags (
        track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,        -- order in which the values were found
        field TEXT,                       -- canonical field, NULL for a key the app does not map
        raw_key TEXT NOT NULL,            -- the key as stored in the file (ID3 frame id, Vorbis key...)
        value TEXT NOT NULL,
        PRIMARY KEY (track_id, position)
    );
    CREATE INDEX track_tags_field ON track_tags(field, track_id);

    CREATE TABLE scan_issues (
        scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,               -- ignored (not audio), unreadable-folder, loop...
        reason TEXT NOT NULL
    );
    CREATE INDEX scan_issues_scan ON scan_issues(scan_id);

    -- files with no audio extension whose content was found not to be audio: not opened again
    -- until their size or times change
    CREATE TABLE ignored_files (
        path_key BLOB PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER,
        reason TEXT NOT NULL
    );
    """,
    # 2: values staged for writing, and the write journal behind undo.
    """
    CREATE TABLE staged_values (
        track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
        field TEXT NOT NULL,
        vals TEXT NOT NULL,               -- JSON list; [] removes the field from the file
        origin TEXT NOT NULL DEFAULT 'user',
        staged_at TEXT NOT NULL,
        PRIMARY KEY (track_id, field)
    );

    CREATE TABLE write_batches (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('write', 'undo')),
        undo_of INTEGER REFERENCES write_batches(id),
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running'
            CHECK (status IN ('running', 'completed', 'cancelled', 'interrupted')),
        options TEXT NOT NULL DEFAULT '{}',   -- JSON: id3 version, keep mtime
        written INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        unchanged INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE write_files (
        id INTEGER PRIMARY KEY,
        batch_id INTEGER NOT NULL REFERENCES write_batches(id) ON DELETE CASCADE,
        track_id INTEGER REFERENCES tracks(id) ON DELETE SET NULL,
        path_key BLOB NOT NULL,
        path TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'written', 'failed', 'unchanged', 'undone')),
        error TEXT,
        tag_format TEXT,
        backup TEXT,                      -- JSON: the raw tag items the write replaced, for an exact undo
        undoes INTEGER REFERENCES write_files(id),  -- for an undo: the write it reverses
        before_size INTEGER, before_mtime_ns INTEGER,
        after_size INTEGER, after_mtime_ns INTEGER, after_fingerprint TEXT,
        finished_at TEXT
    );
    CREATE INDEX write_files_batch ON write_files(batch_id);
    CREATE INDEX write_files_track ON write_files(track_id);

    CREATE TABLE write_changes (
        write_file_id INTEGER NOT NULL REFERENCES write_files(id) ON DELETE CASCADE,
        field TEXT NOT NULL,
        old_values TEXT NOT NULL,         -- JSON list
        new_values TEXT NOT NULL,         -- JSON list
        PRIMARY KEY (write_file_id, field)
    );
    """,
    # 3: what the audio models heard in each track.
    """
    CREATE TABLE analyses (
        track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
        model TEXT NOT NULL,              -- model name from its manifest
        model_version TEXT NOT NULL,
        audio_key TEXT NOT NULL,          -- codec, rate, channels, duration analysed: changed audio is re-analysed
        status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
        error TEXT,
        labels TEXT,                      -- JSON {label: mean probability over the track's windows}
        embedding BLOB,                   -- float32 vector, L2-normalised
        windows INTEGER,
        seconds REAL,
        device TEXT,
        analysed_at TEXT NOT NULL,
        PRIMARY KEY (track_id, model)
    );
    """,
    # 4: measurements of the signal itself (no model): loudness.
    """
    CREATE TABLE track_features (
        track_id INTEGER PRIMARY KEY REFERENCES tracks(id) ON DELETE CASCADE,
        audio_key TEXT NOT NULL,
        loudness_lufs REAL,               -- integrated loudness, EBU R128 / ITU-R BS.1770-4
        peak_dbfs REAL,                   -- sample peak
        error TEXT,
        measured_at TEXT NOT NULL
    );
    """,
    # 5: tempo and key, and which version of the measurements a row holds.
    """
    ALTER TABLE track_features ADD COLUMN features_version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE track_features ADD COLUMN bpm REAL;              -- beats per minute, with decimals
    ALTER TABLE track_features ADD COLUMN bpm_confidence REAL;   -- 0-1
    ALTER TABLE track_features ADD COLUMN key TEXT;              -- TKEY notation: "F#m", "Bb"
    ALTER TABLE track_features ADD COLUMN key_confidence REAL;   -- 0-1
    """,
    # 6: similarity (text embeddings of the metadata, what each vector index file holds) and proposals.
    """
    CREATE TABLE text_embeddings (
        track_id INTEGER PRIMARY KEY REFERENCES tracks(id) ON DELETE CASCADE,
        model TEXT NOT NULL,
        text_hash TEXT NOT NULL,          -- sha1 of the metadata text embedded: changed tags are re-embedded
        embedding BLOB NOT NULL,          -- float32, L2-normalised
        embedded_at TEXT NOT NULL
    );
    CREATE TABLE index_entries (
        space TEXT NOT NULL,              -- 'audio' or 'meta'
        track_id INTEGER NOT NULL,
        stamp TEXT NOT NULL,              -- what the vector was made from: re-added when it changes
        PRIMARY KEY (space, track_id)
    );
    CREATE TABLE proposals (
        track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
        field TEXT NOT NULL,
        vals TEXT NOT NULL,               -- JSON list of proposed values, as written into files
        confidence REAL NOT NULL,         -- 0-1
        method TEXT NOT NULL,             -- vote (or tagger: no neighbour knew the field), llm, hybrid; tempo, derived
        candidates TEXT NOT NULL,         -- JSON {value: confidence} of every candidate considered
        neighbours TEXT NOT NULL,         -- JSON [[track_id, score, [values]]] that support the proposal
        models TEXT NOT NULL,             -- JSON {model: version} used
        status TEXT NOT NULL DEFAULT 'proposed' CHECK (status IN ('proposed', 'accepted', 'rejected')),
        created_at TEXT NOT NULL,
        PRIMARY KEY (track_id, field)
    );
    """,
    # 7: captions (a track's caption, and each chunk's with its times where a captioner heard chunks) and
    #    the full-text search index's state.
    """
    CREATE TABLE captions (
        track_id INTEGER PRIMARY KEY REFERENCES tracks(id) ON DELETE CASCADE,
        text TEXT NOT NULL,
        model TEXT NOT NULL,              -- template, llm:<model>, or a captioning model's name
        evidence TEXT NOT NULL,           -- JSON: what the caption was written from
        evidence_hash TEXT NOT NULL,      -- a caption is redone when its evidence changes
        created_at TEXT NOT NULL
    );
    CREATE TABLE caption_chunks (
        track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
        start_s REAL NOT NULL,
        end_s REAL NOT NULL,
        text TEXT NOT NULL,
        model TEXT NOT NULL,
        PRIMARY KEY (track_id, start_s)
    );
    CREATE TABLE search_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        stamp TEXT NOT NULL               -- what the search index was built from
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
