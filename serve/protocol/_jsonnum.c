/* Flat JSON number arrays parsed straight into a typed buffer (serve/protocol/jsondata.py).
 *
 * The general decoder (orjson -> a Python float per element -> numpy) gives each JSON number
 * the correctly rounded double of its decimal text, then casts it to the tensor's dtype. This
 * module gives the same bits without making a Python object per element:
 *
 *   - a strict scanner of JSON numbers ("-"? int frac? exp?, nothing else: no NaN, no "+1",
 *     no "01", no "1."), whitespace and commas;
 *   - the decimal value kept exact as a mantissa of up to 19 digits (uint64) and a power of ten
 *     (a number with more significant digits is left to the general decoder: orjson rounds
 *     some of those - exact midpoints hundreds of digits long - otherwise than strtod);
 *   - exact arithmetic where one rounding is provably the correct one: Clinger's fast path
 *     (mantissa <= 2^53, |power| <= 22: one double multiply or divide), else the mantissa
 *     times a 128-bit significand of 5^power (Eisel and Lemire's method, _jsonnum_pow5.h):
 *     the 128 high bits of that product are within 2 units of the exact value, so the rounding
 *     it shows is the correct one unless the bits below the double's are within 4 units of a
 *     midpoint (then, and for subnormals, overflow and exponents beyond the table, strtod
 *     decides, which glibc and macOS round correctly, as orjson does for up to 19 digits);
 *   - float32 as numpy casts the double: one C conversion.
 *
 * Anything it is not sure of (a token that is not a plain number, an integer a double cannot
 * hold exactly, a float in integer data, a count that is not the expected one) makes `parse`
 * answer False, and the caller decodes the body with the general decoder. The parse runs
 * without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __APPLE__
#include <xlocale.h>
#endif

/* Clinger's fast path needs double arithmetic rounded once (SSE2, not x87 extended). */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define HAVE_EXACT_DOUBLE 1
#endif

#define MAX_DIGITS 19         /* 10^19 - 1 < 2^64 */
#define TWO_53 9007199254740992ULL

static locale_t c_locale; /* strtod_l: '.' is the decimal point whatever LC_NUMERIC says */

static const double POW10_D[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

#if defined(__SIZEOF_INT128__)
#define HAVE_INT128 1
#include "_jsonnum_pow5.h"
typedef unsigned __int128 u128;
#endif

typedef enum { KIND_F32, KIND_F64, KIND_I64 } kind_t;

static inline int is_digit(unsigned char c) { return (unsigned)(c - '0') < 10u; }
static inline int is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* ---- one number ------------------------------------------------------------------------ */

/* A JSON number token read as sign, mantissa and power of ten: the value is exactly
 * (-1)^negative * m * 10^power when `exact` (else m holds the first MAX_DIGITS digits). */
typedef struct {
    uint64_t m;
    int64_t power;
    int negative, exact, is_int;
} decimal_t;

/* The exponent part at s ('e' or 'E'), added to d->power; NULL when malformed. */
static const char *exponent(const char *s, decimal_t *d) {
    int negative = 0;
    int64_t value = 0;
    d->is_int = 0;
    s++;
    if (*s == '+' || *s == '-') negative = (*s++ == '-');
    if (!is_digit((unsigned char)*s)) return NULL;
    while (is_digit((unsigned char)*s)) {
        if (value < 100000) value = value * 10 + (*s - '0'); /* beyond: strtod's 0 or inf */
        s++;
    }
    d->power += negative ? -value : value;
    return s;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define EIGHT_AT_A_TIME 1

static inline uint64_t load8(const char *s) {
    uint64_t v;
    memcpy(&v, s, 8);
    return v; /* little-endian: s[0] is the low byte */
}

/* Eight ASCII digits in a word (as simdjson tests them). */
static inline int eight_digits(uint64_t v) {
    return ((v & 0xF0F0F0F0F0F0F0F0u) | (((v + 0x0606060606060606u) & 0xF0F0F0F0F0F0F0F0u) >> 4)) ==
           0x3333333333333333u;
}

/* The value of eight ASCII digits in a word, read at once (as simdjson and fast_float do). */
static inline uint64_t eight_digits_value(uint64_t v) {
    const uint64_t mask = 0x000000FF000000FFu;
    v -= 0x3030303030303030u;
    v = (v * 10) + (v >> 8);
    return ((((v & mask) * 0x000F424000000064u) + (((v >> 16) & mask) * 0x0000271000000001u)) >>
            32) &
           0xFFFFFFFFu;
}

#endif

/* A JSON number at s, strictly ("-"? int frac? exp?), read into d; the end of the token, or
 * NULL when it is not a JSON number. Every scan stops at the array's closing ']' (at `end` - 1),
 * so no byte past it is read. All digits are accumulated (wrapping past 19), then counted: d is
 * exact when at most 19 of them are significant (leading zeros are not). */
static const char *scan_number(const char *s, const char *end, decimal_t *d) {
    uint64_t m = 0;
    const char *first;
    d->negative = *s == '-';
    s += d->negative;
    first = s;
    if (*s == '0') {
        s++;
        if (is_digit((unsigned char)*s)) return NULL; /* "01" is not JSON */
    } else {
        if (!is_digit((unsigned char)*s)) return NULL;
        do {
            m = m * 10 + (uint64_t)(*s - '0');
            s++;
        } while (is_digit((unsigned char)*s));
    }
    Py_ssize_t digits = s - first;
    d->power = 0;
    d->is_int = 1;
    if (*s == '.') {
        const char *fraction = ++s;
        d->is_int = 0;
#ifdef EIGHT_AT_A_TIME
        while (end - s >= 8 && eight_digits(load8(s))) {
            m = m * 100000000u + eight_digits_value(load8(s));
            s += 8;
        }
#endif
        while (is_digit((unsigned char)*s)) {
            m = m * 10 + (uint64_t)(*s - '0');
            s++;
        }
        if (s == fraction) return NULL; /* "1." is not JSON */
        d->power = -(int64_t)(s - fraction);
        digits += s - fraction;
    }
    d->exact = 1;
    if (digits > MAX_DIGITS) { /* leading zeros ("0.000") are not significant */
        const char *p = first;
        while (*p == '0' || *p == '.') {
            if (*p == '0') digits--;
            p++;
        }
        d->exact = digits <= MAX_DIGITS;
    }
    d->m = m;
    if (*s == 'e' || *s == 'E') s = exponent(s, d);
    return s;
}

/* The correctly rounded double of the JSON number token [s, end), or 0 when strtod does not
 * read exactly that token or the value is beyond double (orjson refuses those). */
static int slow_double(const char *s, const char *end, double *out) {
    char *stop;
    double value = strtod_l(s, &stop, c_locale);
    if (stop != end || value > DBL_MAX || value < -DBL_MAX) return 0;
    *out = value;
    return 1;
}

#ifdef HAVE_INT128
/* m * 10^power (m != 0, power within the table) as a normal double in *out: 1, or 0 when the
 * product cannot say the rounding for sure (the caller asks strtod). */
static inline int eisel_lemire(uint64_t m, int64_t power, double *out) {
    int lz = __builtin_clzll(m);
    uint64_t w = m << lz; /* top bit set */
    const uint64_t *t = POW5_128[power - POW5_SMALLEST];
    u128 high = (u128)w * t[0], low = (u128)w * t[1];
    /* A = floor(w * T / 2^64), 128 bits: T is within 1 of 5^power's significand and the
     * low word dropped, so A is within 2 units of the exact scaled value */
    u128 a = high + (low >> 64);
    uint64_t hi = (uint64_t)(a >> 64), lo = (uint64_t)a;
    int upper = (int)(hi >> 63);
    int shift = upper + 9; /* hi >> shift: 54 bits, the double's 53 and a rounding bit */
    uint64_t below_mask = ((uint64_t)1 << shift) - 1;
    uint64_t below_hi = hi & below_mask;
    if ((below_hi == 0 && lo < 4) || (below_hi == below_mask && lo > UINT64_MAX - 4)) return 0;
    uint64_t mantissa = hi >> shift;
    int64_t biased = (int64_t)POW5_EXP[power - POW5_SMALLEST] + power + 63 + upper - lz + 1023;
    mantissa = (mantissa >> 1) + (mantissa & 1); /* not a tie: the bits below are not zero */
    if (mantissa == ((uint64_t)1 << 53)) {
        mantissa >>= 1;
        biased++;
    }
    if (biased <= 0 || biased >= 0x7FF) return 0; /* subnormal or beyond double */
    uint64_t bits = ((uint64_t)biased << 52) | (mantissa & (((uint64_t)1 << 52) - 1));
    memcpy(out, &bits, sizeof bits);
    return 1;
}
#endif

/* The double orjson gives for the float token [start, end) read as d (0 if unsure). */
static int to_double(const decimal_t *d, const char *start, const char *end, double *out) {
    uint64_t m = d->m;
    int64_t power = d->power;
    double value;
    const char *digits = start + d->negative; /* strtod reads the magnitude */
    if (!d->exact) {
        /* more than 19 significant digits: orjson (the general decoder) rounds some of them
         * otherwise than strtod (exact midpoints hundreds of digits long), so it decides */
        return 0;
    }
    if (m == 0) {
        value = 0.0;
    }
#ifdef HAVE_EXACT_DOUBLE
    else if (m <= TWO_53 && power >= -22 && power <= 22) {
        value = power < 0 ? (double)m / POW10_D[-power] : (double)m * POW10_D[power];
    }
#endif
#ifdef HAVE_INT128
    else if (power >= POW5_SMALLEST && power <= POW5_LARGEST &&
             eisel_lemire(m, power, &value)) {
    }
#endif
    else if (!slow_double(digits, end, &value)) {
        return 0;
    }
    *out = d->negative ? -value : value;
    return 1;
}

/* One JSON number at s (the array's closing ']' at `end` - 1 stops every scan) as `kind`.
 * Returns the end of the token, or NULL when it is not a number this parser is sure of. */
static inline const char *number(const char *s, const char *end, kind_t kind,
                                 double *dout, int64_t *iout) {
    decimal_t d;
    const char *after = scan_number(s, end, &d);
    if (after == NULL) return NULL;
    if (kind == KIND_I64) {
        /* integers only (a float in integer data is the general decoder's 400), within int64 */
        if (!d.is_int || !d.exact) return NULL;
        if (d.negative ? d.m > (uint64_t)INT64_MAX + 1 : d.m > (uint64_t)INT64_MAX) return NULL;
        *iout = d.negative ? (int64_t)(0 - d.m) : (int64_t)d.m;
        return after;
    }
    if (d.is_int) {
        /* orjson gives a Python int: exact in a double below 2^53 (numpy may convert larger
         * ones through int64 or object arrays: the general decoder decides those); "-0" is 0 */
        if (!d.exact || d.m >= TWO_53) return NULL;
        *dout = d.negative && d.m ? -(double)d.m : (double)d.m;
        return after;
    }
    return to_double(&d, s, after, dout) ? after : NULL;
}

/* Parse the array [src, end) (from '[' to its ']') into `count` elements of `kind` at `out`.
 * Returns 1, or 0 when the array is not exactly `count` numbers this parser is sure of. */
static int parse_array(const char *src, const char *end, kind_t kind, void *out, Py_ssize_t count) {
    const char *p = src + 1;
    Py_ssize_t n = 0;
    while (is_ws((unsigned char)*p)) p++;
    if (*p == ']') return 0; /* empty: the general decoder checks the shape */
    for (;;) {
        double d = 0.0;
        int64_t i = 0;
        if (n == count) return 0;
        p = number(p, end, kind, &d, &i);
        if (p == NULL) return 0;
        switch (kind) {
        case KIND_F32:
            ((float *)out)[n] = (float)d; /* as numpy casts float64 to float32 */
            break;
        case KIND_F64:
            ((double *)out)[n] = d;
            break;
        case KIND_I64:
            ((int64_t *)out)[n] = i;
            break;
        }
        n++;
        while (is_ws((unsigned char)*p)) p++;
        if (*p == ',') {
            p++;
            while (is_ws((unsigned char)*p)) p++;
            continue;
        }
        break;
    }
    return *p == ']' && p == end - 1 && n == count;
}

static PyObject *jsonnum_parse(PyObject *self, PyObject *args) {
    Py_buffer src, out;
    Py_ssize_t start, end;
    int kind_char;
    if (!PyArg_ParseTuple(args, "y*nnw*C", &src, &start, &end, &out, &kind_char)) return NULL;
    PyObject *result = NULL;
    kind_t kind;
    Py_ssize_t itemsize;
    switch (kind_char) {
    case 'f':
        kind = KIND_F32, itemsize = 4;
        break;
    case 'd':
        kind = KIND_F64, itemsize = 8;
        break;
    case 'q':
        kind = KIND_I64, itemsize = 8;
        break;
    default:
        PyErr_SetString(PyExc_ValueError, "kind must be 'f' (float32), 'd' (float64) or 'q' (int64)");
        goto done;
    }
    if (start < 0 || end > src.len || end - start < 2) {
        PyErr_SetString(PyExc_ValueError, "the array is not within the buffer");
        goto done;
    }
    const char *base = (const char *)src.buf;
    if (base[start] != '[' || base[end - 1] != ']') {
        PyErr_SetString(PyExc_ValueError, "the span is not an array from '[' to ']'");
        goto done;
    }
    if (out.len % itemsize) {
        PyErr_SetString(PyExc_ValueError, "the output buffer is not a whole number of elements");
        goto done;
    }
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = parse_array(base + start, base + end, kind, out.buf, out.len / itemsize);
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(ok);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return result;
}

/* ---- locating `inputs[i].data` arrays in a V2 infer body ---------------------------------- */

typedef struct {
    Py_ssize_t index, start, end;
} span_t;

typedef struct {
    const char *base, *end;
    span_t *spans;
    Py_ssize_t count, capacity;
} walk_t;

static const char *ws(const char *p, const char *e) {
    while (p < e && is_ws((unsigned char)*p)) p++;
    return p;
}

/* A string at p ('"'): the position after its closing quote, or NULL; *escaped when it holds
 * a backslash. */
static const char *string_end(const char *p, const char *e, int *escaped) {
    p++;
    const char *quote = memchr(p, '"', (size_t)(e - p));
    if (quote == NULL) return NULL;
    if (memchr(p, '\\', (size_t)(quote - p)) == NULL) return quote + 1;
    *escaped = 1;
    while (p < e) {
        if (*p == '\\') {
            p += 2;
        } else if (*p == '"') {
            return p + 1;
        } else {
            p++;
        }
    }
    return NULL;
}

/* Past any JSON value at p (brackets balanced outside strings), or NULL. Not a validator:
 * orjson validates what this skips. */
static const char *value_end(const char *p, const char *e) {
    int escaped = 0;
    if (p >= e) return NULL;
    if (*p == '"') return string_end(p, e, &escaped);
    if (*p == '[' || *p == '{') {
        Py_ssize_t depth = 0;
        while (p < e) {
            char c = *p;
            if (c == '"') {
                p = string_end(p, e, &escaped);
                if (p == NULL) return NULL;
                continue;
            }
            if (c == '[' || c == '{') depth++;
            if (c == ']' || c == '}') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < e && !is_ws((unsigned char)*p) && *p != ',' && *p != ']' && *p != '}') p++;
    return p;
}

/* An object's key at p: its end (after ':' and whitespace) or NULL; NULL too for an escaped
 * key, whose meaning the caller could not compare. */
static const char *key(const char *p, const char *e, const char **name, Py_ssize_t *length) {
    int escaped = 0;
    if (p >= e || *p != '"') return NULL;
    const char *after = string_end(p, e, &escaped);
    if (after == NULL || escaped) return NULL;
    *name = p + 1;
    *length = after - 1 - (p + 1);
    p = ws(after, e);
    if (p >= e || *p != ':') return NULL;
    return ws(p + 1, e);
}

static int is_key(const char *name, Py_ssize_t length, const char *want) {
    return (size_t)length == strlen(want) && memcmp(name, want, (size_t)length) == 0;
}

static int add_span(walk_t *w, Py_ssize_t index, const char *start, const char *end) {
    if (w->count == w->capacity) {
        Py_ssize_t capacity = w->capacity ? 2 * w->capacity : 4;
        span_t *spans = PyMem_RawRealloc(w->spans, (size_t)capacity * sizeof(span_t));
        if (spans == NULL) return 0;
        w->spans = spans;
        w->capacity = capacity;
    }
    w->spans[w->count++] = (span_t){index, start - w->base, end - w->base};
    return 1;
}

/* The members of an object at p ('{'). In an input object (`input` >= 0) a "data" array that
 * starts with a number is recorded; at the top level (`input` < 0) "inputs" is walked. NULL: not sure (a duplicate
 * or escaped key, or not JSON as expected). */
static const char *object(walk_t *w, const char *p, Py_ssize_t input);

static const char *inputs_array(walk_t *w, const char *p) {
    const char *e = w->end;
    Py_ssize_t index = 0;
    p = ws(p + 1, e);
    if (p < e && *p == ']') return p + 1;
    for (;;) {
        if (p >= e) return NULL;
        p = *p == '{' ? object(w, p, index) : value_end(p, e);
        if (p == NULL) return NULL;
        p = ws(p, e);
        if (p >= e) return NULL;
        if (*p == ']') return p + 1;
        if (*p != ',') return NULL;
        p = ws(p + 1, e);
        index++;
    }
}

static const char *object(walk_t *w, const char *p, Py_ssize_t input) {
    const char *e = w->end;
    int seen = 0; /* "inputs" (top level) or "data" (an input) */
    p = ws(p + 1, e);
    if (p < e && *p == '}') return p + 1;
    for (;;) {
        const char *name;
        Py_ssize_t length;
        p = key(p, e, &name, &length);
        if (p == NULL || p >= e) return NULL;
        if (input < 0 && is_key(name, length, "inputs")) {
            if (seen++) return NULL;
            p = *p == '[' ? inputs_array(w, p) : value_end(p, e);
        } else if (input >= 0 && is_key(name, length, "data")) {
            if (seen++) return NULL;
            const char *first = *p == '[' ? ws(p + 1, e) : e;
            if (first < e && (is_digit((unsigned char)*first) || *first == '-')) {
                /* numbers: the array ends at the first ']' (memchr), or it is no flat array of
                 * numbers and parse, then orjson, refuse the span */
                const char *close = memchr(p, ']', (size_t)(e - p));
                if (close == NULL || !add_span(w, input, p, close + 1)) return NULL;
                p = close + 1;
            } else {
                p = value_end(p, e); /* nested, strings, booleans: left to orjson */
            }
        } else {
            p = value_end(p, e);
        }
        if (p == NULL) return NULL;
        p = ws(p, e);
        if (p >= e) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p = ws(p + 1, e);
    }
}

static PyObject *jsonnum_locate(PyObject *self, PyObject *arg) {
    Py_buffer src;
    if (PyObject_GetBuffer(arg, &src, PyBUF_SIMPLE) < 0) return NULL;
    walk_t w = {(const char *)src.buf, (const char *)src.buf + src.len, NULL, 0, 0};
    const char *p;
    Py_BEGIN_ALLOW_THREADS
    p = ws(w.base, w.end);
    p = p < w.end && *p == '{' ? object(&w, p, -1) : NULL;
    if (p != NULL && ws(p, w.end) != w.end) p = NULL;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyObject *result;
    if (p == NULL || w.count == 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = PyList_New(w.count);
        for (Py_ssize_t i = 0; result != NULL && i < w.count; i++) {
            span_t s = w.spans[i];
            PyObject *item = Py_BuildValue("(nnn)", s.index, s.start, s.end);
            if (item == NULL) Py_CLEAR(result);
            else PyList_SET_ITEM(result, i, item);
        }
    }
    PyMem_RawFree(w.spans);
    return result;
}

static PyMethodDef methods[] = {
    {"parse", jsonnum_parse, METH_VARARGS,
     "parse(body, start, end, out, kind) -> bool\n\n"
     "Parse the flat JSON number array body[start:end] ('[' to ']') into the writable buffer "
     "`out` (kind 'f' float32, 'd' float64, 'q' int64), exactly as many elements as `out` "
     "holds. False when the array is anything else (the caller then uses the general "
     "decoder); the values are those of orjson + numpy."},
    {"locate", jsonnum_locate, METH_O,
     "locate(body) -> list[(input_index, start, end)] | None\n\n"
     "The arrays that are the `data` of `inputs[i]` objects in a V2 infer body, as byte "
     "spans; None when there are none, or a key is escaped or repeated where it matters."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonnum",
    "Flat JSON number arrays parsed straight into typed buffers (see _jsonnum.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__jsonnum(void) {
    if (c_locale == (locale_t)0) {
        c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
        if (c_locale == (locale_t)0) return PyErr_NoMemory();
    }
    return PyModule_Create(&module);
}
