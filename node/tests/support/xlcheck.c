/*
 * xlcheck - run Xen's own xl.cfg parser (libxlutil) over generated configs.
 *
 * Usage: xlcheck CFG...
 * Build: cc -O2 -Wall -o xlcheck xlcheck.c -lxlutil -lxenlight
 *
 * For each file this parses it with xlu_cfg_readfile (the lexer/parser that
 * `xl create` uses), then requires and type-checks the keys our generator
 * emits, and parses every `disk` item with xlu_disk_parse (xl's disk-spec
 * parser).  It is stricter than xl in a few places (all-digit name, no
 * kernel/bootloader for PV/PVH, maxvcpus < vcpus, an empty disk target or
 * a `target=` that is not last in a disk spec); see the checks below.
 * libxlutil has no public API to enumerate keys, so unknown keys cannot be
 * rejected here, nor duplicate keys (the last one silently wins), nor
 * quoted numbers (`memory = "1024"` is accepted, as by xl).
 *
 * stdout, one item per line, so tests can check the decoded values:
 *   file: PATH
 *   KEY: VALUE                     (each string/number key that is set)
 *   disk: vdev=V format=F readwrite=0|1 target=T   (T runs to end of line)
 *   vif: SPEC                      (verbatim; libxlutil cannot parse vifs)
 * Values are printed as decoded by libxlutil, except that `\` is printed
 * as `\\` and control bytes as `\n`, `\t` or `\xHH`, so that every item is
 * exactly one line.  Ordinary values therefore appear verbatim.
 *
 * Exit status: 0 all files OK; 1 some file rejected (reason on stderr,
 * naming the file and the key); 2 usage or out-of-memory.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxlutil.h>

static const char *path; /* the file being checked, for messages */

static int bad(const char *key, const char *why)
{
    fprintf(stderr, "xlcheck: %s: key `%s': %s\n", path, key, why);
    return 1;
}

/* Print value, escaping `\` and control bytes so it stays on one line. */
static void put_escaped(const char *value)
{
    const unsigned char *p;

    for (p = (const unsigned char *)value; *p; p++) {
        if (*p == '\\')      fputs("\\\\", stdout);
        else if (*p == '\n') fputs("\\n", stdout);
        else if (*p == '\t') fputs("\\t", stdout);
        else if (*p < 0x20 || *p == 0x7f) printf("\\x%02x", *p);
        else putchar(*p);
    }
}

/* Print "label: value" as one line. */
static void show(const char *label, const char *value)
{
    printf("%s: ", label);
    put_escaped(value);
    putchar('\n');
}

/* Optional (or required) single string.  *out is NULL if absent. */
static int get_str(XLU_Config *cfg, const char *key, int required,
                   const char **out)
{
    int rc = xlu_cfg_get_string(cfg, key, out, 1);

    if (rc == ESRCH) {
        *out = NULL;
        return required ? bad(key, "missing (required)") : 0;
    }
    if (rc) return bad(key, "is a list but must be a single string");
    show(key, *out);
    return 0;
}

/* String that must be one of a NULL-terminated set of words. */
static int get_word(XLU_Config *cfg, const char *key,
                    const char *const *allowed, const char **out)
{
    const char *const *a;

    if (get_str(cfg, key, 0, out)) return 1;
    if (!*out) return 0;
    for (a = allowed; *a; a++)
        if (!strcmp(*out, *a)) return 0;
    return bad(key, "value not allowed here");
}

/* Positive integer.  *out is 0 if absent and optional. */
static int get_pos(XLU_Config *cfg, const char *key, int required, long *out)
{
    char buf[32];
    int rc = xlu_cfg_get_long(cfg, key, out, 1);

    if (rc == ESRCH) {
        *out = 0;
        return required ? bad(key, "missing (required)") : 0;
    }
    if (rc == ERANGE) return bad(key, "number out of range");
    if (rc) return bad(key, "not a single integer");
    if (*out <= 0) return bad(key, "must be > 0");
    snprintf(buf, sizeof buf, "%ld", *out);
    show(key, buf);
    return 0;
}

/*
 * xlu_disk_parse's `target=` swallows the rest of the spec, so in
 * "target=/x, access=rw" the path becomes "/x, access=rw".  Xen accepts
 * that silently; we reject a target containing ",[ \t]*WORD=".
 */
static int swallowed(const char *t)
{
    for (; (t = strchr(t, ',')); t++) {
        const char *p = t + 1 + strspn(t + 1, " \t");
        size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_-");
        if (n && p[n] == '=') return 1;
    }
    return 0;
}

static int check_disks(XLU_Config *cfg)
{
    XLU_ConfigList *list;
    int n, i, rc;

    rc = xlu_cfg_get_list(cfg, "disk", &list, &n, 1);
    if (rc == ESRCH) return bad("disk", "missing (required)");
    if (rc) return bad("disk", "must be a list [ '...', ... ]");

    for (i = 0; i < n; i++) {
        const char *spec = xlu_cfg_get_listitem(list, i);
        libxl_device_disk d;

        if (!spec) return bad("disk", "list item is not a string");
        libxl_device_disk_init(&d);
        /* On failure xlu_disk_parse explains on the cfg's report (stderr). */
        rc = xlu_disk_parse(cfg, 1, &spec, &d);
        if (rc) {
            libxl_device_disk_dispose(&d);
            fprintf(stderr, "xlcheck: %s: key `disk': item %d rejected by "
                    "xlu_disk_parse: `%s'\n", path, i, spec);
            return 1;
        }
        if (!d.pdev_path || !*d.pdev_path) {
            fprintf(stderr, "xlcheck: %s: key `disk': item %d has an empty "
                    "target: `%s'\n", path, i, spec);
            libxl_device_disk_dispose(&d);
            return 1;
        }
        if (swallowed(d.pdev_path)) {
            fprintf(stderr, "xlcheck: %s: key `disk': item %d: `target=' "
                    "must be last, it swallowed the parameters after it: "
                    "`%s'\n", path, i, spec);
            libxl_device_disk_dispose(&d);
            return 1;
        }
        fputs("disk: vdev=", stdout);
        put_escaped(d.vdev);
        printf(" format=%s readwrite=%d target=",
               libxl_disk_format_to_string(d.format), d.readwrite);
        put_escaped(d.pdev_path);
        putchar('\n');
        libxl_device_disk_dispose(&d);
    }
    return 0;
}

static int check_vifs(XLU_Config *cfg)
{
    XLU_ConfigList *list;
    int n, i, rc;

    rc = xlu_cfg_get_list(cfg, "vif", &list, &n, 1);
    if (rc == ESRCH) return 0;
    if (rc) return bad("vif", "must be a list [ '...', ... ]");
    for (i = 0; i < n; i++) {
        const char *spec = xlu_cfg_get_listitem(list, i);
        if (!spec) return bad("vif", "list item is not a string");
        show("vif", spec);
    }
    return 0;
}

/* What a bootloader boot adds: its arguments (a list, as xl wants since
 * 4.x), the XSA-443 restriction and its user. */
static int check_bootloader(XLU_Config *cfg)
{
    XLU_ConfigList *list;
    const char *user;
    long restrict_;
    int n, i, rc;

    rc = xlu_cfg_get_list(cfg, "bootloader_args", &list, &n, 1);
    if (rc && rc != ESRCH) return bad("bootloader_args", "must be a list [ '...', ... ]");
    for (i = 0; !rc && i < n; i++) {
        const char *arg = xlu_cfg_get_listitem(list, i);
        if (!arg) return bad("bootloader_args", "list item is not a string");
        show("bootloader_arg", arg);
    }
    if (get_pos(cfg, "bootloader_restrict", 0, &restrict_)) return 1;
    return get_str(cfg, "bootloader_user", 0, &user);
}

static const char *const types[] = { "pv", "pvh", "hvm", NULL };
static const char *const actions[] = {
    "destroy", "restart", "preserve", "rename-restart",
    "coredump-destroy", "coredump-restart", "soft-reset", NULL
};

static int check_keys(XLU_Config *cfg)
{
    static const char *const plain[] = {
        "ramdisk", "root", "extra", "cpus", NULL
    };
    static const char *const on[] = {
        "on_poweroff", "on_reboot", "on_crash", NULL
    };
    const char *name, *type, *kernel, *bootloader, *s;
    const char *const *k;
    long memory, vcpus, maxvcpus;

    if (get_str(cfg, "name", 1, &name)) return 1;
    if (!*name) return bad("name", "is empty");
    if (strspn(name, "0123456789") == strlen(name))
        return bad("name", "is all digits (xl would take it for a domid)");

    if (get_word(cfg, "type", types, &type)) return 1;
    if (get_pos(cfg, "memory", 1, &memory)) return 1;
    if (get_pos(cfg, "vcpus", 1, &vcpus)) return 1;
    if (get_pos(cfg, "maxvcpus", 0, &maxvcpus)) return 1;
    if (maxvcpus && maxvcpus < vcpus)
        return bad("maxvcpus", "is smaller than vcpus");

    if (get_str(cfg, "kernel", 0, &kernel)) return 1;
    if (get_str(cfg, "bootloader", 0, &bootloader)) return 1;
    if ((!type || strcmp(type, "hvm")) && !kernel && !bootloader)
        return bad("kernel", "PV/PVH guest needs `kernel' or `bootloader'");
    for (k = plain; *k; k++)
        if (get_str(cfg, *k, 0, &s)) return 1;
    if (bootloader && check_bootloader(cfg)) return 1;
    for (k = on; *k; k++)
        if (get_word(cfg, *k, actions, &s)) return 1;

    if (check_disks(cfg)) return 1;
    return check_vifs(cfg);
}

static int check_file(const char *file)
{
    XLU_Config *cfg;
    int rc;

    path = file;
    printf("file: %s\n", file);
    cfg = xlu_cfg_init(stderr, file);
    if (!cfg) {
        fprintf(stderr, "xlcheck: %s: out of memory\n", file);
        exit(2);
    }
    rc = xlu_cfg_readfile(cfg, file);
    if (rc) {
        /* libxlutil has already printed "FILE:LINE: config parsing error". */
        fprintf(stderr, "xlcheck: %s: rejected by xlu_cfg_readfile: %s\n",
                file, strerror(rc));
        rc = 1;
    } else {
        rc = check_keys(cfg);
    }
    xlu_cfg_destroy(cfg);
    return rc;
}

int main(int argc, char **argv)
{
    int i, failed = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CFG...\n", argv[0]);
        return 2;
    }
    for (i = 1; i < argc; i++)
        failed |= check_file(argv[i]);
    fflush(stdout);
    return failed;
}
