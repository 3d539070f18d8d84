/**
 * Named limits for file transfer. Every size a peer can claim is checked
 * against one of these before anything proportional to it is allocated.
 *
 * The limits fit together: MAX_MANIFEST_BYTES holds MAX_CHUNKS chunk ids with
 * room to spare for MAX_ENTRIES short paths, and MAX_FILE_SIZE is what
 * MAX_CHUNKS chunks of MAX_CHUNK_SIZE can hold, so no file a valid manifest
 * describes is cut short by another limit.
 */

const KiB = 1024
const MiB = 1024 * KiB

/**
 * Plaintext bytes per chunk unless the sharer picks otherwise. 1 MiB keeps the
 * per-chunk costs (a hash, a tag, a store file, a request) below 1% of the time
 * spent moving the bytes, and matches the size measured in DESIGN.md.
 */
export const CHUNK_SIZE = 1 * MiB

/**
 * Below this, per-chunk overhead (29 bytes sealing, 32 bytes of id in the
 * manifest, a file and an index row in the store) starts to dominate, and a
 * share hits MAX_CHUNKS at only 8 GiB.
 */
export const MIN_CHUNK_SIZE = 64 * KiB

/**
 * Above this, one lost or slow chunk costs too much re-fetching, and a
 * receiver holding a few chunks in flight per peer needs too much memory.
 */
export const MAX_CHUNK_SIZE = 4 * MiB

/**
 * Files of 1 byte up to this many are packed at share time: concatenated, in
 * manifest order, into shared chunks of up to the chunk size (manifest.ts).
 * A fetch of 100,000 files of 4 KiB then asks for ~400 chunks, not 100,000,
 * and each pack's files are written, fsynced and placed together. Bigger
 * files gain little from packing (their own chunk's costs are a small part of
 * moving them) and would make the packs' sealed copies (the owner keeps one,
 * chunk-store.ts) cost more disk.
 */
export const PACKED_FILE_MAX = 64 * KiB

/** Sealed chunks carry a format byte, a 12-byte nonce and a 16-byte GCM tag. */
export const SEAL_OVERHEAD = 1 + 12 + 16

/** The largest sealed chunk a store accepts or a peer may send. */
export const MAX_SEALED_CHUNK_SIZE = MAX_CHUNK_SIZE + SEAL_OVERHEAD

/** Chunk ids, share ids, file hashes and Merkle roots are all sha256. */
export const ID_LENGTH = 32

/**
 * A whole encoded manifest (envelope included), checked before any decoding.
 * 16 MiB holds MAX_CHUNKS ids (4 MiB) plus MAX_ENTRIES entries of typical
 * length (about 100 bytes each with a 20-byte path; a tree of long paths
 * meets this limit first); a larger tree should be shared as several shares.
 */
export const MAX_MANIFEST_BYTES = 16 * MiB

/**
 * Files and folders in one manifest: as many as chunks (a small file is one
 * chunk). Bounds the work of validating paths and the memory of the decoded
 * tree (about 40 MB at the limit); a photo library of 100 000 files fits.
 */
export const MAX_ENTRIES = 128 * 1024

/**
 * Chunks in one manifest, summed over its files: 4 MiB of chunk ids. At the
 * default chunk size a share holds up to 128 GiB, at MAX_CHUNK_SIZE 512 GiB.
 * The count is computed from the claimed sizes by arithmetic and checked
 * before any chunk list is touched, so a claim of 10^9 chunks costs nothing.
 */
export const MAX_CHUNKS = 128 * 1024

/** The largest file a manifest can describe: MAX_CHUNKS of MAX_CHUNK_SIZE (512 GiB). */
export const MAX_FILE_SIZE = MAX_CHUNKS * MAX_CHUNK_SIZE

/**
 * UTF-8 bytes of a relative path. Well under Linux's PATH_MAX (4096) so the
 * destination folder's own path still fits in front of it.
 */
export const MAX_PATH_LENGTH = 1024

/** UTF-8 bytes of one path segment: NAME_MAX on ext4, APFS and NTFS. */
export const MAX_SEGMENT_LENGTH = 255

/** Folder nesting. Deeper trees are almost always a symlink loop or an attack. */
export const MAX_PATH_DEPTH = 64

/** UTF-8 bytes of a share's display name. */
export const MAX_SHARE_NAME_LENGTH = 255

/** Suffix of the temporary file a download is assembled in, beside its destination. */
export const PARTIAL_SUFFIX = '.kith-partial'

/**
 * Bytes AES-GCM takes per call wherever kith seals or opens (chunks in
 * seal.ts, backup blobs in services/backup/blob.ts). Each call's output is a
 * fresh buffer; one of 128 KiB or more glibc maps fresh from the kernel (the
 * daemon's MALLOC_MMAP_THRESHOLD_, services/daemon-heap.ts), a page fault per
 * 4 KiB, while 64 KiB ones come from its heap. Measured on the bench machine,
 * a whole chunk or blob per call against 64 KiB: backup blobs sealed 12.9 ->
 * 2.2-3.7 CPU ms/MB and opened 9.0 -> 1.3-2.4; an owner serving a 256 MiB
 * fetch 14.5-15.1 -> 8.4-11.3.
 */
export const CIPHER_SLICE = 64 * 1024
