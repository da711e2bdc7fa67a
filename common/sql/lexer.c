/*
 * lexer.c - the SQL lexer: turns a whole query string into tokens the way PostgreSQL's scanner
 * does (identifiers folded to lower case unless quoted and truncated to 63 bytes, '' and E''
 * and $$ strings, numbers, operators with PostgreSQL's rules about trailing + and -, nested
 * block comments). Every token remembers its byte range and its 1-based character position,
 * which the parser and analyzer put into err->position. Lexical errors are reported like
 * PostgreSQL's: `unterminated quoted string at or near "'abc"`.
 */
#include "sql_int.h"

#include <stdio.h>

static int char_pos(const char *sql, int off)
{
	int n = 1;
	for (int i = 0; i < off; i++)
		if (((unsigned char)sql[i] & 0xC0) != 0x80)
			n++;
	return n;
}

static bool is_space(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static bool is_ident_start(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
static bool is_ident_cont(int c)
{
	return is_ident_start(c) || (c >= '0' && c <= '9') || c == '$';
}
static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}
static bool is_op_char(int c)
{
	return c && strchr("~!@#^&|`?+-*/%<>=", c) != NULL;
}

/* Error "<msg> at or near "<text from off to the end of input>"", as PostgreSQL's scanner
 * reports lexical errors (the rest of the input is shown, truncated for sanity). */
static int lex_err(tally_err *err, const char *sql, int off, const char *msg)
{
	size_t rest = strlen(sql + off);
	int show = rest > 400 ? 400 : (int)rest;
	tally_err_set(err, TALLY_SQLSTATE_SYNTAX, "%s at or near \"%.*s\"", msg, show, sql + off);
	if (err)
		err->position = char_pos(sql, off);
	return -1;
}

typedef struct lexbuf {
	char *p;
	size_t len, cap;
} lexbuf;

static void lb_put(lexbuf *b, tally_arena *a, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 64;
		while (ncap < b->len + n + 1)
			ncap *= 2;
		char *np = tally_arena_alloc(a, ncap);
		if (b->len)
			memcpy(np, b->p, b->len);
		b->p = np;
		b->cap = ncap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void lb_utf8(lexbuf *b, tally_arena *a, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	lb_put(b, a, u, n);
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* After a closing quote at s[i-1]: PostgreSQL continues a string literal over whitespace that
 * contains a newline followed by another quote. Returns the index of that quote or -1. */
static int quote_continue(const char *s, int i)
{
	bool nl = false;
	int j = i;
	while (is_space((unsigned char)s[j])) {
		if (s[j] == '\n' || s[j] == '\r')
			nl = true;
		j++;
	}
	return (nl && s[j] == '\'') ? j : -1;
}

/* Scan a quoted string starting at the quote s[i]; escapes: E-string backslashes if ext. */
static int lex_string(const char *s, int start, int i, bool ext, tally_arena *a, lexbuf *b,
		      int *endp, tally_err *err)
{
	for (;;) {
		i++; /* past the opening quote */
		for (;;) {
			char c = s[i];
			if (c == 0)
				return lex_err(err, s, start, "unterminated quoted string");
			if (c == '\'') {
				if (s[i + 1] == '\'') {
					lb_put(b, a, "'", 1);
					i += 2;
					continue;
				}
				break;
			}
			if (ext && c == '\\') {
				char d = s[i + 1];
				if (d == 0)
					return lex_err(err, s, start, "unterminated quoted string");
				i += 2;
				switch (d) {
				case 'b':
					lb_put(b, a, "\b", 1);
					break;
				case 'f':
					lb_put(b, a, "\f", 1);
					break;
				case 'n':
					lb_put(b, a, "\n", 1);
					break;
				case 'r':
					lb_put(b, a, "\r", 1);
					break;
				case 't':
					lb_put(b, a, "\t", 1);
					break;
				case 'x': {
					int v = 0, k = 0;
					while (k < 2 && hexval((unsigned char)s[i]) >= 0) {
						v = v * 16 + hexval((unsigned char)s[i]);
						i++;
						k++;
					}
					if (k == 0) {
						lb_put(b, a, "x", 1);
						break;
					}
					if (v == 0)
						goto nul_byte;
					char ch = (char)v;
					lb_put(b, a, &ch, 1);
					break;
				}
				case 'u':
				case 'U': {
					int want = d == 'u' ? 4 : 8;
					uint32_t v = 0;
					for (int k = 0; k < want; k++) {
						int h = hexval((unsigned char)s[i + k]);
						if (h < 0) {
							tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
								      "invalid Unicode escape");
							tally_err_hint(
							    err,
							    "Unicode escapes must be \\uXXXX or "
							    "\\UXXXXXXXX.");
							if (err)
								err->position = char_pos(s, i - 2);
							return -1;
						}
						v = v * 16 + (uint32_t)h;
					}
					i += want;
					if (v == 0 || v > 0x10FFFF ||
					    (v >= 0xD800 && v <= 0xDFFF)) {
						tally_err_set(err, TALLY_SQLSTATE_SYNTAX,
							      "invalid Unicode escape value");
						if (err)
							err->position = char_pos(s, i - want - 2);
						return -1;
					}
					lb_utf8(b, a, v);
					break;
				}
				default:
					if (d >= '0' && d <= '7') {
						int v = d - '0', k = 1;
						while (k < 3 && s[i] >= '0' && s[i] <= '7') {
							v = v * 8 + (s[i] - '0');
							i++;
							k++;
						}
						if ((v & 0xFF) == 0)
							goto nul_byte;
						char ch = (char)v;
						lb_put(b, a, &ch, 1);
					} else {
						lb_put(b, a, &d, 1);
					}
				}
				continue;
			}
			/* plain run */
			int j = i;
			while (s[j] && s[j] != '\'' && !(ext && s[j] == '\\'))
				j++;
			lb_put(b, a, s + i, (size_t)(j - i));
			i = j;
		}
		i++; /* past the closing quote */
		int q = quote_continue(s, i);
		if (q < 0)
			break;
		i = q;
	}
	*endp = i;
	if (!b->p)
		lb_put(b, a, "", 0);
	return 0;
nul_byte:
	tally_err_set(err, "22021", "invalid byte sequence for encoding \"UTF8\": 0x00");
	return -1;
}

int sql_lex(const char *s, tally_arena *a, sql_tok **toks, int *ntoks, tally_err *err)
{
	size_t slen = strlen(s);
	if (slen > (size_t)INT32_MAX / 2)
		return tally_err_set(err, TALLY_SQLSTATE_PROGRAM_LIMIT, "query string is too long");
	int cap = 64, n = 0;
	sql_tok *t = tally_arena_alloc(a, sizeof *t * (size_t)cap);
	if (!t)
		return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY, "out of memory");
	int i = 0;
	for (;;) {
		/* whitespace and comments */
		for (;;) {
			while (is_space((unsigned char)s[i]))
				i++;
			if (s[i] == '-' && s[i + 1] == '-') {
				while (s[i] && s[i] != '\n' && s[i] != '\r')
					i++;
				continue;
			}
			if (s[i] == '/' && s[i + 1] == '*') {
				int start = i, depth = 0;
				while (s[i]) {
					if (s[i] == '/' && s[i + 1] == '*') {
						depth++;
						i += 2;
					} else if (s[i] == '*' && s[i + 1] == '/') {
						depth--;
						i += 2;
						if (depth == 0)
							break;
					} else {
						i++;
					}
				}
				if (depth > 0)
					return lex_err(err, s, start, "unterminated /* comment");
				continue;
			}
			break;
		}
		if (n + 1 >= cap) {
			sql_tok *nt = tally_arena_alloc(a, sizeof *t * (size_t)cap * 2);
			if (!nt)
				return tally_err_set(err, TALLY_SQLSTATE_OUT_OF_MEMORY,
						     "out of memory");
			memcpy(nt, t, sizeof *t * (size_t)n);
			t = nt;
			cap *= 2;
		}
		sql_tok *k = &t[n];
		memset(k, 0, sizeof *k);
		k->off = i;
		unsigned char c = (unsigned char)s[i];
		if (c == 0) {
			k->kind = TK_EOF;
			k->str = "";
			k->end = i;
			n++;
			break;
		}
		lexbuf b = {0};
		if ((c == 'e' || c == 'E') && s[i + 1] == '\'') {
			if (lex_string(s, i, i + 1, true, a, &b, &i, err))
				return -1;
			k->kind = TK_STRING;
			k->str = b.p;
			k->len = b.len;
		} else if ((c == 'n' || c == 'N') && s[i + 1] == '\'') {
			if (lex_string(s, i, i + 1, false, a, &b, &i, err))
				return -1;
			k->kind = TK_STRING;
			k->str = b.p;
			k->len = b.len;
		} else if (c == '\'') {
			if (lex_string(s, i, i, false, a, &b, &i, err))
				return -1;
			k->kind = TK_STRING;
			k->str = b.p;
			k->len = b.len;
		} else if (is_ident_start(c)) {
			int j = i;
			while (is_ident_cont((unsigned char)s[j]))
				j++;
			size_t len = (size_t)(j - i);
			size_t keep = len;
			if (keep > TALLY_NAME_MAX - 1) {
				keep = TALLY_NAME_MAX - 1;
				while (keep > 0 && ((unsigned char)s[i + keep] & 0xC0) == 0x80)
					keep--;
			}
			char *p = tally_arena_strndup(a, s + i, keep);
			for (size_t q = 0; q < keep; q++)
				if (p[q] >= 'A' && p[q] <= 'Z')
					p[q] = (char)(p[q] + 32);
			k->kind = TK_IDENT;
			k->str = p;
			k->len = keep;
			i = j;
		} else if (c == '"') {
			int start = i;
			i++;
			for (;;) {
				if (s[i] == 0)
					return lex_err(err, s, start,
						       "unterminated quoted identifier");
				if (s[i] == '"') {
					if (s[i + 1] == '"') {
						lb_put(&b, a, "\"", 1);
						i += 2;
						continue;
					}
					i++;
					break;
				}
				int j = i;
				while (s[j] && s[j] != '"')
					j++;
				lb_put(&b, a, s + i, (size_t)(j - i));
				i = j;
			}
			if (b.len == 0)
				return lex_err(err, s, start, "zero-length delimited identifier");
			if (b.len > TALLY_NAME_MAX - 1) {
				size_t keep = TALLY_NAME_MAX - 1;
				while (keep > 0 && ((unsigned char)b.p[keep] & 0xC0) == 0x80)
					keep--;
				b.p[keep] = 0;
				b.len = keep;
			}
			k->kind = TK_IDENT;
			k->quoted = true;
			k->str = b.p;
			k->len = b.len;
		} else if (is_digit(c) || (c == '.' && is_digit((unsigned char)s[i + 1]))) {
			int j = i;
			bool isfloat = false;
			while (is_digit((unsigned char)s[j]))
				j++;
			if (s[j] == '.' && s[j + 1] != '.') {
				isfloat = true;
				j++;
				while (is_digit((unsigned char)s[j]))
					j++;
			}
			if (s[j] == 'e' || s[j] == 'E') {
				int e = j + 1;
				if (s[e] == '+' || s[e] == '-')
					e++;
				if (is_digit((unsigned char)s[e])) {
					isfloat = true;
					j = e;
					while (is_digit((unsigned char)s[j]))
						j++;
				}
			}
			if (is_ident_start((unsigned char)s[j])) {
				int e = j;
				while (is_ident_cont((unsigned char)s[e]))
					e++;
				char *junk = tally_arena_strndup(a, s + i, (size_t)(e - i));
				tally_err_set(
				    err, TALLY_SQLSTATE_SYNTAX,
				    "trailing junk after numeric literal at or near \"%s\"", junk);
				if (err)
					err->position = char_pos(s, i);
				return -1;
			}
			k->kind = isfloat ? TK_FLOAT : TK_INT;
			k->str = tally_arena_strndup(a, s + i, (size_t)(j - i));
			k->len = (size_t)(j - i);
			i = j;
		} else if (c == '$') {
			int j = i + 1;
			if (is_digit((unsigned char)s[j])) {
				while (is_digit((unsigned char)s[j]))
					j++;
				if (is_ident_start((unsigned char)s[j])) {
					tally_err_set(
					    err, TALLY_SQLSTATE_SYNTAX,
					    "trailing junk after parameter at or near \"%.*s\"",
					    j + 1 - i, s + i);
					if (err)
						err->position = char_pos(s, i);
					return -1;
				}
				k->kind = TK_PARAM;
				k->str = tally_arena_strndup(a, s + i, (size_t)(j - i));
				k->len = (size_t)(j - i);
				i = j;
			} else {
				/* dollar quote: $tag$ ... $tag$ */
				if (is_ident_start((unsigned char)s[j])) {
					while (is_ident_cont((unsigned char)s[j]) && s[j] != '$')
						j++;
				}
				if (s[j] != '$')
					goto syntax_char;
				size_t taglen = (size_t)(j - i + 1);
				const char *body = s + j + 1;
				const char *q = body;
				const char *close = NULL;
				while ((q = strchr(q, '$')) != NULL) {
					if (strncmp(q, s + i, taglen) == 0) {
						close = q;
						break;
					}
					q++;
				}
				if (!close)
					return lex_err(err, s, i,
						       "unterminated dollar-quoted string");
				k->kind = TK_STRING;
				k->str = tally_arena_strndup(a, body, (size_t)(close - body));
				k->len = (size_t)(close - body);
				i = (int)(close - s) + (int)taglen;
			}
		} else if (is_op_char(c)) {
			int j = i;
			while (is_op_char((unsigned char)s[j]))
				j++;
			int nch = j - i;
			for (int q = i; q + 1 < j; q++) {
				if ((s[q] == '/' && s[q + 1] == '*') ||
				    (s[q] == '-' && s[q + 1] == '-')) {
					nch = q - i;
					break;
				}
			}
			if (nch > 1 && (s[i + nch - 1] == '+' || s[i + nch - 1] == '-')) {
				int q;
				for (q = nch - 2; q >= 0; q--)
					if (strchr("~!@#^&|`?%", s[i + q]))
						break;
				if (q < 0) {
					do {
						nch--;
					} while (nch > 1 &&
						 (s[i + nch - 1] == '+' || s[i + nch - 1] == '-'));
				}
			}
			k->kind = TK_OP;
			k->str = tally_arena_strndup(a, s + i, (size_t)nch);
			k->len = (size_t)nch;
			i += nch;
		} else {
			switch (c) {
			case '(':
				k->kind = TK_LPAREN;
				break;
			case ')':
				k->kind = TK_RPAREN;
				break;
			case ',':
				k->kind = TK_COMMA;
				break;
			case ';':
				k->kind = TK_SEMI;
				break;
			case '.':
				k->kind = TK_DOT;
				break;
			case '[':
				k->kind = TK_LBRACKET;
				break;
			case ']':
				k->kind = TK_RBRACKET;
				break;
			case ':':
				if (s[i + 1] == ':') {
					k->kind = TK_DCOLON;
					i++;
				} else {
					k->kind = TK_COLON;
				}
				break;
			default:
				goto syntax_char;
			}
			k->str = tally_arena_strndup(a, s + k->off, (size_t)(i + 1 - k->off));
			k->len = strlen(k->str);
			i++;
		}
		k->end = i;
		n++;
		continue;
	syntax_char : {
		/* A byte no token starts with: PostgreSQL reports the syntax error at it. */
		int len = 1;
		while (len < 4 && ((unsigned char)s[i + len] & 0xC0) == 0x80)
			len++;
		tally_err_set(err, TALLY_SQLSTATE_SYNTAX, "syntax error at or near \"%.*s\"", len,
			      s + i);
		if (err)
			err->position = char_pos(s, i);
		return -1;
	}
	}
	/* character positions, in one pass */
	int cp = 1, at = 0;
	for (int q = 0; q < n; q++) {
		while (at < t[q].off) {
			if (((unsigned char)s[at] & 0xC0) != 0x80)
				cp++;
			at++;
		}
		t[q].cpos = cp;
	}
	*toks = t;
	*ntoks = n;
	return 0;
}
