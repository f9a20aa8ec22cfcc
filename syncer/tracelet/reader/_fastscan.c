/*
 * tracelet.reader._fastscan -- C fast path of EventFileReader for simple_value scalars.
 *
 * Scanner.scan() walks TFRecord frames in a bytes buffer, checks both CRC32Cs, and decodes the
 * protobuf wire format of `tensorboard.Event` for the one shape that dominates real logdirs
 * (PyTorch / tensorboardX scalars):
 *
 *     Event { wall_time=1 double, step=2 int64, summary=5 Summary { value=1 repeated Value {
 *             tag=1 string, simple_value=2 float, [metadata=9 SummaryMetadata] } } }
 *
 * plus events with no summary values at all (file_version, bare step/wall_time, empty summary),
 * which the Python path counts as nothing. Anything else -- another field, a duplicate oneof or
 * message field, a wire type we do not expect, a Value without exactly one tag and one
 * simple_value, a string that is not valid UTF-8 (upb rejects it for proto3 strings) -- is handed
 * back to Python *undecoded* (SCAN_SLOW), which parses it with protobuf exactly as the pure-Python
 * reader does. The C side therefore never has to agree with upb on a hard case: it only accepts
 * what it can decode without doubt, and refuses the rest.
 *
 * Framing outcomes mirror records.iter_records; the Python caller owns refills, "not yet",
 * corruption reporting and batch sealing (see events.EventFileReader._batches_fast).
 *
 * Two layouts for the decoded points: scan() appends Python objects to four lists (the engine's
 * ScalarColumns); scan_typed() writes tag numbers, steps, wall times and values as raw machine
 * values into the array.array buffers of a points.TypedScalars (`tracelet export`, which hands
 * them to Arrow as they are): no object per point.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TRACELET_HAVE_SSE42_PATH 1
#include <nmmintrin.h>
#endif

/* Return codes of Scanner.scan, mirrored as constants on the module. */
enum {
    SCAN_NEED_HEADER = 0, /* fewer than 12 bytes left in the buffer */
    SCAN_NEED_BODY = 1,   /* header fine, record not wholly in the buffer; x = data length */
    SCAN_SLOW = 2,        /* a good record the C decoder does not take; data = buf[x:y] */
    SCAN_FULL = 3,        /* `room` points appended: the caller seals the batch */
    SCAN_ZERO_HEADER = 4, /* 12 zero bytes where a header should be: a hole, "not yet" */
    SCAN_CORRUPT = 5,     /* bad length CRC at i: nothing after it can be framed */
    SCAN_BAD_DATA = 6,    /* bad data CRC: record at x skipped (counted), i is past it */
};

#define HEADER_BYTES 12
#define FOOTER_BYTES 4
#define MASK_DELTA 0xa282ead8u

/* ---------------------------------------------------------------------------------------- */
/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78)                                      */

static uint32_t crc_table[8][256];

static void
crc_init_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xff] ^ (c >> 8);
            crc_table[t][n] = c;
        }
    }
}

/* Slicing-by-8; reads bytes one by one so it is right on any endianness. */
static uint32_t
crc32c_sw(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
              crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef TRACELET_HAVE_SSE42_PATH
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
#if defined(__x86_64__)
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8); /* x86 is little-endian, as the CRC instruction expects */
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
#endif
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        crc = _mm_crc32_u32(crc, w);
        p += 4;
        n -= 4;
    }
    while (n--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

typedef uint32_t (*crc_update_fn)(uint32_t, const uint8_t *, size_t);
static crc_update_fn crc_update = crc32c_sw;
static int crc_is_hardware = 0;

static inline uint32_t
masked_crc(const uint8_t *p, size_t n)
{
    uint32_t c = ~crc_update(0xffffffffu, p, n);
    return ((c >> 15) | (c << 17)) + MASK_DELTA;
}

/* ---------------------------------------------------------------------------------------- */
/* Little-endian loads and protobuf wire primitives                                          */

static inline uint32_t
load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
load_le64(const uint8_t *p)
{
    return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

/* Strict varint: at most 10 bytes, and a 10th byte may only carry bit 63. Anything upb might
 * read differently (longer, or high bits it would silently drop) is refused: returns 0. */
static inline int
read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end)
            return 0;
        uint8_t b = *p++;
        if (shift == 63 && b > 1)
            return 0;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            *pp = p;
            return 1;
        }
    }
    return 0;
}

/* Read a LEN field's length and bounds-check it: on success [*start, *stop) is the payload. */
static inline int
read_len(const uint8_t **pp, const uint8_t *end, const uint8_t **start, const uint8_t **stop)
{
    uint64_t n;
    if (!read_varint(pp, end, &n) || n > (uint64_t)(end - *pp))
        return 0;
    *start = *pp;
    *stop = *pp + n;
    *pp = *stop;
    return 1;
}

/* Well-formed UTF-8 exactly as Unicode defines it (no overlongs, surrogates, > U+10FFFF): the
 * same set Python's strict decoder and upb's utf8_range accept. */
static int
utf8_valid(const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        uint8_t lo = 0x80, hi = 0xbf;
        int more;
        if (c >= 0xc2 && c <= 0xdf)
            more = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            more = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        }
        else if (c >= 0xf0 && c <= 0xf4) {
            more = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        }
        else
            return 0;
        if (end - p <= more)
            return 0;
        if (p[1] < lo || p[1] > hi)
            return 0;
        for (int k = 2; k <= more; k++)
            if ((p[k] & 0xc0) != 0x80)
                return 0;
        p += more + 1;
    }
    return 1;
}

/* PluginData { plugin_name=1 string, content=2 bytes }, nothing else. */
static int
plugin_data_ok(const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        uint64_t key;
        const uint8_t *a, *b;
        if (!read_varint(&p, end, &key))
            return 0;
        if (key == ((1 << 3) | 2)) {
            if (!read_len(&p, end, &a, &b) || !utf8_valid(a, b))
                return 0;
        }
        else if (key == ((2 << 3) | 2)) {
            if (!read_len(&p, end, &a, &b))
                return 0;
        }
        else
            return 0;
    }
    return 1;
}

/* SummaryMetadata that upb would surely parse. Its content is ignored on purpose: the Python
 * path never looks at metadata of a simple_value (it does not touch the tag->plugin map). */
static int
metadata_ok(const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        uint64_t key, v;
        const uint8_t *a, *b;
        if (!read_varint(&p, end, &key))
            return 0;
        switch (key) {
        case (1 << 3) | 2: /* plugin_data */
            if (!read_len(&p, end, &a, &b) || !plugin_data_ok(a, b))
                return 0;
            break;
        case (2 << 3) | 2: /* display_name */
        case (3 << 3) | 2: /* summary_description */
            if (!read_len(&p, end, &a, &b) || !utf8_valid(a, b))
                return 0;
            break;
        case (4 << 3) | 0: /* data_class (open enum) */
            if (!read_varint(&p, end, &v))
                return 0;
            break;
        default:
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Tag cache: raw tag bytes -> str, so a tag is decoded once, not once per point.            */

#define TAG_SLOTS 8192          /* power of two */
#define TAG_MAX_LIVE (TAG_SLOTS / 2) /* keep probes short; past this the cache starts over */

typedef struct {
    PyObject *str;    /* owned; NULL = empty slot */
    const char *utf8; /* the str's own UTF-8 buffer (== the raw tag bytes) */
    Py_ssize_t len;
    uint32_t hash;
    uint64_t gen;     /* typed columns: `id` is the tag's number in the table of generation `gen` */
    Py_ssize_t id;
} TagSlot;

typedef struct {
    PyObject_HEAD
    TagSlot *slots;
    Py_ssize_t live;
    PyObject *table;  /* typed columns: the tag table (names list) the slots' ids refer to */
    uint64_t gen;     /* bumped whenever `table` changes: ids of older generations are stale */
} Scanner;

static void
tags_clear(Scanner *self)
{
    for (Py_ssize_t k = 0; k < TAG_SLOTS; k++)
        Py_CLEAR(self->slots[k].str);
    self->live = 0;
}

static inline uint32_t
tag_hash(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a: tags are short, this beats any setup cost */
    for (size_t k = 0; k < n; k++)
        h = (h ^ p[k]) * 16777619u;
    return h;
}

/* New reference to the str for tag bytes [p, p+n); NULL with no exception set = not valid
 * UTF-8 (caller refuses the record); NULL with an exception = a real error. */
static PyObject *
tag_lookup(Scanner *self, const uint8_t *p, Py_ssize_t n, TagSlot **slot_out)
{
    uint32_t h = tag_hash(p, (size_t)n);
    size_t k = h & (TAG_SLOTS - 1);
    for (;;) {
        TagSlot *s = &self->slots[k];
        if (!s->str)
            break;
        if (s->hash == h && s->len == n && memcmp(s->utf8, p, (size_t)n) == 0) {
            Py_INCREF(s->str);
            *slot_out = s;
            return s->str;
        }
        k = (k + 1) & (TAG_SLOTS - 1);
    }
    if (!utf8_valid(p, p + n))
        return NULL;
    PyObject *str = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
    if (!str) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear(); /* cannot happen after utf8_valid; if it does, Python decides */
        return NULL;
    }
    Py_ssize_t ulen;
    const char *utf8 = PyUnicode_AsUTF8AndSize(str, &ulen);
    if (!utf8) {
        Py_DECREF(str);
        return NULL;
    }
    if (self->live >= TAG_MAX_LIVE) {
        tags_clear(self); /* bounded memory for runs with unbounded tag sets */
        k = h & (TAG_SLOTS - 1);
    }
    TagSlot *s = &self->slots[k];
    Py_INCREF(str);
    s->str = str;
    s->utf8 = utf8;
    s->len = ulen;
    s->hash = h;
    s->gen = 0; /* generations start at 1: no id cached yet */
    self->live++;
    *slot_out = s;
    return str;
}

/* ---------------------------------------------------------------------------------------- */
/* Event decoding                                                                            */

/* Where decoded points go. List mode: four lists (tags, steps, wall_times, values) of Python
 * objects, the engine's ScalarColumns. Typed mode (points.TypedScalars, `tracelet export`): the
 * tag's number in a tag table (names list + str -> number dict, shared by all batches of a file)
 * and the step, wall time and value as raw int32/int64/double in four array.array buffers, so no
 * Python object is made per point. */
typedef struct {
    int typed;
    PyObject *tags, *steps, *walls, *values; /* list mode (borrowed) */
    PyObject *obj, *names, *index;            /* typed mode (borrowed / owned, owned) */
    PyObject *arrays[4];                      /* owned: ids, steps, wall_times, values */
    Py_buffer views[4];
    int have_views;
    Py_ssize_t n, cap;                        /* points held; room in the buffers */
} Columns;

enum { DECODED = 0, REFUSED = 1, FAILED = -1 };

static const char *const typed_fields[4] = {"ids", "steps", "wall_times", "values"};
static const Py_ssize_t typed_sizes[4] = {4, 8, 8, 8};

static void
typed_release(Columns *c)
{
    if (c->have_views) {
        for (int k = 0; k < 4; k++)
            PyBuffer_Release(&c->views[k]);
        c->have_views = 0;
    }
}

/* Writable views of the four buffers; cap = the points they all have room for. */
static int
typed_acquire(Columns *c)
{
    c->cap = PY_SSIZE_T_MAX;
    for (int k = 0; k < 4; k++) {
        if (PyObject_GetBuffer(c->arrays[k], &c->views[k], PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
            for (int j = 0; j < k; j++)
                PyBuffer_Release(&c->views[j]);
            return -1;
        }
        if (c->views[k].itemsize != typed_sizes[k]) {
            for (int j = 0; j <= k; j++)
                PyBuffer_Release(&c->views[j]);
            PyErr_Format(PyExc_TypeError, "scan_typed(): %s must hold %zd-byte items",
                         typed_fields[k], typed_sizes[k]);
            return -1;
        }
        Py_ssize_t room = c->views[k].len / typed_sizes[k];
        if (room < c->cap)
            c->cap = room;
    }
    c->have_views = 1;
    return 0;
}

/* Room for one more point: the buffers are grown by TypedScalars._grow() (views released
 * first: an array.array cannot resize while exported). */
static int
typed_reserve(Columns *c)
{
    if (c->n < c->cap)
        return 0;
    typed_release(c);
    PyObject *r = PyObject_CallMethod(c->obj, "_grow", NULL);
    if (!r)
        return -1;
    Py_DECREF(r);
    if (typed_acquire(c) < 0)
        return -1;
    if (c->n >= c->cap) {
        PyErr_SetString(PyExc_RuntimeError, "TypedScalars._grow() did not make room");
        return -1;
    }
    return 0;
}

/* The tag's number in the table: from the slot when it was given in this generation, else the
 * table's dict (Python's slow path adds tags there too), else appended as a new name. */
static Py_ssize_t
typed_tag_id(Scanner *self, Columns *c, TagSlot *slot)
{
    if (slot->gen == self->gen)
        return slot->id;
    PyObject *num = PyDict_GetItemWithError(c->index, slot->str);
    Py_ssize_t id;
    if (num) {
        id = PyLong_AsSsize_t(num);
        if (id == -1 && PyErr_Occurred())
            return -1;
    }
    else {
        if (PyErr_Occurred())
            return -1;
        id = PyList_GET_SIZE(c->names);
        if (id > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "more than 2**31 distinct tags");
            return -1;
        }
        num = PyLong_FromSsize_t(id);
        if (!num)
            return -1;
        int err = PyList_Append(c->names, slot->str) || PyDict_SetItem(c->index, slot->str, num);
        Py_DECREF(num);
        if (err)
            return -1;
    }
    slot->gen = self->gen;
    slot->id = id;
    return id;
}

static int
truncate_columns(Columns *c, Py_ssize_t n0)
{
    if (c->typed) { /* the refused record's points are simply not counted */
        c->n = n0;
        return 0;
    }
    PyObject *lists[4] = {c->tags, c->steps, c->walls, c->values};
    for (int k = 0; k < 4; k++)
        if (PyList_GET_SIZE(lists[k]) > n0 && PyList_SetSlice(lists[k], n0, PY_SSIZE_T_MAX, NULL))
            return -1;
    return 0;
}

/* Decode one Event payload into the columns. DECODED (+*appended), REFUSED (columns left as they
 * were: Python must decode it), or FAILED (exception set). */
static int
decode_event(Scanner *self, const uint8_t *p, const uint8_t *end, Columns *cols,
             Py_ssize_t *appended)
{
    double wall = 0.0;
    int64_t step = 0;
    const uint8_t *sum = NULL, *sum_end = NULL;
    int what_fields = 0; /* `what` is a oneof: two members (or one twice) is Python's job */

    while (p < end) {
        uint64_t key, v;
        const uint8_t *a, *b;
        if (!read_varint(&p, end, &key))
            return REFUSED;
        switch (key) {
        case (1 << 3) | 1: /* wall_time: fixed64 double; last one wins, as in protobuf */
            if (end - p < 8)
                return REFUSED;
            v = load_le64(p);
            memcpy(&wall, &v, 8);
            p += 8;
            break;
        case (2 << 3) | 0: /* step: int64 varint (negative steps take 10 bytes) */
            if (!read_varint(&p, end, &v))
                return REFUSED;
            step = (int64_t)v;
            break;
        case (3 << 3) | 2: /* file_version: counted as nothing, but upb checks its UTF-8 */
            if (!read_len(&p, end, &a, &b) || !utf8_valid(a, b))
                return REFUSED;
            what_fields++;
            break;
        case (5 << 3) | 2: /* summary */
            if (!read_len(&p, end, &sum, &sum_end))
                return REFUSED;
            what_fields++;
            break;
        default:
            return REFUSED;
        }
    }
    if (what_fields > 1)
        return REFUSED;
    *appended = 0;
    if (!sum || sum == sum_end)
        return DECODED; /* no values: the Python path counts such an event as nothing */

    Py_ssize_t n0 = cols->typed ? cols->n : PyList_GET_SIZE(cols->values);
    PyObject *step_obj = NULL, *wall_obj = NULL;
    int rc = FAILED;
    Py_ssize_t count = 0;
    if (!cols->typed) {
        step_obj = PyLong_FromLongLong(step);
        wall_obj = step_obj ? PyFloat_FromDouble(wall) : NULL;
    }
    if (!cols->typed && !wall_obj)
        goto done;

    p = sum;
    while (p < sum_end) {
        uint64_t key;
        const uint8_t *vp, *vend;
        if (!read_varint(&p, sum_end, &key) || key != ((1 << 3) | 2) ||
            !read_len(&p, sum_end, &vp, &vend))
            goto refuse;
        const uint8_t *tag = NULL, *tag_end = NULL, *a, *b;
        int have_value = 0, have_meta = 0;
        float f = 0.0f;
        while (vp < vend) {
            if (!read_varint(&vp, vend, &key))
                goto refuse;
            switch (key) {
            case (1 << 3) | 2: /* tag */
                if (tag || !read_len(&vp, vend, &tag, &tag_end))
                    goto refuse;
                break;
            case (2 << 3) | 5: /* simple_value: fixed32 float */
                if (have_value || vend - vp < 4)
                    goto refuse;
                {
                    uint32_t bits = load_le32(vp);
                    memcpy(&f, &bits, 4);
                }
                vp += 4;
                have_value = 1;
                break;
            case (9 << 3) | 2: /* metadata: must parse, is then ignored (as in Python) */
                if (have_meta || !read_len(&vp, vend, &a, &b) || !metadata_ok(a, b))
                    goto refuse;
                have_meta = 1;
                break;
            default:
                goto refuse;
            }
        }
        if (!tag || !have_value)
            goto refuse;
        TagSlot *slot = NULL;
        PyObject *tag_obj = tag_lookup(self, tag, tag_end - tag, &slot);
        if (!tag_obj) {
            if (PyErr_Occurred())
                goto done;
            goto refuse;
        }
        if (cols->typed) {
            Py_ssize_t id = typed_tag_id(self, cols, slot);
            Py_DECREF(tag_obj);
            if (id < 0 || typed_reserve(cols) < 0)
                goto done;
            Py_ssize_t at = cols->n++;
            double value = (double)f;
            ((int32_t *)cols->views[0].buf)[at] = (int32_t)id;
            ((int64_t *)cols->views[1].buf)[at] = step;
            memcpy((double *)cols->views[2].buf + at, &wall, sizeof(double));
            memcpy((double *)cols->views[3].buf + at, &value, sizeof(double));
            count++;
            continue;
        }
        PyObject *val_obj = PyFloat_FromDouble((double)f);
        if (!val_obj) {
            Py_DECREF(tag_obj);
            goto done;
        }
        int err = PyList_Append(cols->tags, tag_obj) || PyList_Append(cols->steps, step_obj) ||
                  PyList_Append(cols->walls, wall_obj) || PyList_Append(cols->values, val_obj);
        Py_DECREF(tag_obj);
        Py_DECREF(val_obj);
        if (err)
            goto done;
        count++;
    }
    *appended = count;
    rc = DECODED;
    goto done;
refuse:
    rc = truncate_columns(cols, n0) ? FAILED : REFUSED;
done:
    Py_XDECREF(step_obj);
    Py_XDECREF(wall_obj);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Scanner type                                                                              */

static PyObject *
Scanner_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Scanner() takes no arguments");
        return NULL;
    }
    Scanner *self = (Scanner *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->slots = PyMem_Calloc(TAG_SLOTS, sizeof(TagSlot));
    if (!self->slots) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void
Scanner_dealloc(Scanner *self)
{
    if (self->slots) {
        tags_clear(self);
        PyMem_Free(self->slots);
    }
    Py_CLEAR(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(scan_doc,
"scan(buf, i, tags, steps, wall_times, values, room)\n"
"    -> (code, i, records, appended, bad_data_crc, x, y)\n\n"
"Frame and decode records of `buf` from index `i`, appending simple_value points to the four\n"
"lists, until the buffer runs out of whole records or a record needs Python. Stops right after\n"
"the record that brings `appended` to `room` or more (code SCAN_FULL). `i` comes back as the\n"
"index after the last record consumed (decoded, skipped for a bad data CRC, or returned as\n"
"SCAN_SLOW); `records` counts decoded records only. For SCAN_SLOW the record's data is\n"
"buf[x:y]; for SCAN_NEED_BODY `x` is the record's data length; for SCAN_CORRUPT and\n"
"SCAN_ZERO_HEADER the bad header starts at `i`.");

/* The framing/decoding loop shared by scan() and scan_typed(); args[0] = buf, args[1] = i,
 * `room` already parsed. */
static PyObject *
scan_records(Scanner *self, PyObject *bufobj, PyObject *iobj, Py_ssize_t room, Columns *cols)
{
    Py_ssize_t i = PyLong_AsSsize_t(iobj);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *buf = view.buf;
    const Py_ssize_t n = view.len;
    if (i < 0 || i > n) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "scan(): index out of range");
        return NULL;
    }

    Py_ssize_t records = 0, appended = 0, bad = 0;
    unsigned long long x = 0;
    Py_ssize_t y = 0;
    int code;
    for (;;) {
        Py_ssize_t avail = n - i;
        if (avail < HEADER_BYTES) {
            code = SCAN_NEED_HEADER;
            break;
        }
        const uint8_t *h = buf + i;
        if (masked_crc(h, 8) != load_le32(h + 8)) {
            static const uint8_t zeros[HEADER_BYTES];
            code = memcmp(h, zeros, HEADER_BYTES) ? SCAN_CORRUPT : SCAN_ZERO_HEADER;
            break;
        }
        uint64_t length = load_le64(h);
        if (avail < HEADER_BYTES + FOOTER_BYTES ||
            length > (uint64_t)(avail - HEADER_BYTES - FOOTER_BYTES)) {
            code = SCAN_NEED_BODY;
            x = length;
            break;
        }
        const uint8_t *data = h + HEADER_BYTES;
        const uint8_t *data_end = data + length;
        Py_ssize_t next = i + HEADER_BYTES + (Py_ssize_t)length + FOOTER_BYTES;
        if (masked_crc(data, (size_t)length) != load_le32(data_end)) {
            bad++; /* frame intact, payload not: skip it; return so Python records where */
            code = SCAN_BAD_DATA;
            x = (unsigned long long)i;
            i = next;
            break;
        }
        Py_ssize_t got = 0;
        int rc = decode_event(self, data, data_end, cols, &got);
        if (rc == FAILED) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (rc == REFUSED) {
            code = SCAN_SLOW;
            x = (unsigned long long)(i + HEADER_BYTES);
            y = i + HEADER_BYTES + (Py_ssize_t)length;
            i = next;
            break;
        }
        records++;
        appended += got;
        i = next;
        if (appended >= room) {
            code = SCAN_FULL;
            break;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("innnnKn", code, i, records, appended, bad, x, y);
}

static PyObject *
Scanner_scan(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "scan() takes 7 arguments (%zd given)", nargs);
        return NULL;
    }
    Columns cols = {0};
    cols.tags = args[2];
    cols.steps = args[3];
    cols.walls = args[4];
    cols.values = args[5];
    for (int k = 2; k < 6; k++)
        if (!PyList_Check(args[k])) {
            PyErr_SetString(PyExc_TypeError, "scan(): the four columns must be lists");
            return NULL;
        }
    Py_ssize_t room = PyLong_AsSsize_t(args[6]);
    if (room == -1 && PyErr_Occurred())
        return NULL;
    return scan_records(self, args[0], args[1], room, &cols);
}

PyDoc_STRVAR(scan_typed_doc,
"scan_typed(buf, i, columns, room) -> the tuple scan() returns\n\n"
"scan() into a points.TypedScalars: `columns.names` (list) and `columns.index` (dict) are its\n"
"tag table, `columns.ids` / `steps` / `wall_times` / `values` array.array('i'/'q'/'d'/'d')\n"
"buffers of which the first `columns.n` items are points; C writes after them, grows them with\n"
"`columns._grow()` and sets `columns.n`.");

static PyObject *
Scanner_scan_typed(Scanner *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "scan_typed() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Columns cols = {0};
    cols.typed = 1;
    cols.obj = args[2];
    Py_ssize_t room = PyLong_AsSsize_t(args[3]);
    if (room == -1 && PyErr_Occurred())
        return NULL;
    PyObject *result = NULL, *nobj = NULL;
    cols.names = PyObject_GetAttrString(cols.obj, "names");
    cols.index = cols.names ? PyObject_GetAttrString(cols.obj, "index") : NULL;
    if (!cols.index)
        goto out;
    if (!PyList_Check(cols.names) || !PyDict_Check(cols.index)) {
        PyErr_SetString(PyExc_TypeError, "scan_typed(): names must be a list, index a dict");
        goto out;
    }
    for (int k = 0; k < 4; k++)
        if (!(cols.arrays[k] = PyObject_GetAttrString(cols.obj, typed_fields[k])))
            goto out;
    nobj = PyObject_GetAttrString(cols.obj, "n");
    if (!nobj || ((cols.n = PyLong_AsSsize_t(nobj)) == -1 && PyErr_Occurred()))
        goto out;
    if (cols.names != self->table) { /* another tag table: every cached id is stale */
        Py_INCREF(cols.names);
        Py_XSETREF(self->table, cols.names);
        self->gen++;
    }
    if (typed_acquire(&cols) < 0)
        goto out;
    if (cols.n < 0 || cols.n > cols.cap) {
        PyErr_SetString(PyExc_ValueError, "scan_typed(): n is beyond the buffers");
        goto out;
    }
    result = scan_records(self, args[0], args[1], room, &cols);
    typed_release(&cols);
    if (result) { /* the points written so far are kept whatever happens next */
        PyObject *count = PyLong_FromSsize_t(cols.n);
        if (!count || PyObject_SetAttrString(cols.obj, "n", count) < 0)
            Py_CLEAR(result);
        Py_XDECREF(count);
    }
out:
    typed_release(&cols);
    Py_XDECREF(nobj);
    for (int k = 0; k < 4; k++)
        Py_XDECREF(cols.arrays[k]);
    Py_XDECREF(cols.index);
    Py_XDECREF(cols.names);
    return result;
}

static PyMethodDef Scanner_methods[] = {
    {"scan", (PyCFunction)(void (*)(void))Scanner_scan, METH_FASTCALL, scan_doc},
    {"scan_typed", (PyCFunction)(void (*)(void))Scanner_scan_typed, METH_FASTCALL,
     scan_typed_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(Scanner_doc,
"Scanner()\n\nOne per file read: holds the tag bytes -> str cache (bounded).");

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tracelet.reader._fastscan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Scanner_doc,
    .tp_methods = Scanner_methods,
    .tp_new = Scanner_new,
};

/* ---------------------------------------------------------------------------------------- */
/* Module-level CRC helpers (tests check both implementations against the crc32c package)     */

static PyObject *
crc_call(PyObject *arg, crc_update_fn fn)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t c = ~fn(0xffffffffu, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *
mod_crc32c(PyObject *mod, PyObject *arg)
{
    (void)mod;
    return crc_call(arg, crc_update);
}

static PyObject *
mod_crc32c_software(PyObject *mod, PyObject *arg)
{
    (void)mod;
    return crc_call(arg, crc32c_sw);
}

static PyMethodDef module_methods[] = {
    {"crc32c", mod_crc32c, METH_O, "crc32c(data) -> int: CRC32C, hardware when available."},
    {"crc32c_software", mod_crc32c_software, METH_O,
     "crc32c_software(data) -> int: CRC32C by the slicing-by-8 table."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tracelet.reader._fastscan",
    .m_doc = "C fast path of the event-file reader (framing, CRC32C, simple_value decoding).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastscan(void)
{
    crc_init_table();
#ifdef TRACELET_HAVE_SSE42_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc_update = crc32c_hw;
        crc_is_hardware = 1;
    }
#endif
    if (PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "SCAN_NEED_HEADER", SCAN_NEED_HEADER) ||
        PyModule_AddIntConstant(m, "SCAN_NEED_BODY", SCAN_NEED_BODY) ||
        PyModule_AddIntConstant(m, "SCAN_SLOW", SCAN_SLOW) ||
        PyModule_AddIntConstant(m, "SCAN_FULL", SCAN_FULL) ||
        PyModule_AddIntConstant(m, "SCAN_ZERO_HEADER", SCAN_ZERO_HEADER) ||
        PyModule_AddIntConstant(m, "SCAN_CORRUPT", SCAN_CORRUPT) ||
        PyModule_AddIntConstant(m, "SCAN_BAD_DATA", SCAN_BAD_DATA) ||
        PyModule_AddIntConstant(m, "CRC_HARDWARE", crc_is_hardware)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
