# probe: read one byte of guest memory, report it, optionally write and read back.
#
# Real mode, loaded at guest-physical 0x1000 and entered with %cs = 0, %ip = 0x1000.
# The host sets, before the first KVM_RUN:
#   %ds:%si  the byte to probe
#   %ah      the byte to write there afterwards; 0 means read only
#
# Reports over port I/O, one byte each:
#   port 0x10  the byte read first
#   port 0x11  the byte read back after writing %ah (only when %ah != 0)
# then halts.
#
# A private access the host cannot back stops at the first read with a memory fault
# exit; KVM_RUN again re-executes that read, so the guest needs no retry logic.

        .code16

        movb    (%si), %al
        outb    %al, $0x10
        testb   %ah, %ah
        jz      1f
        movb    %ah, (%si)
        movb    (%si), %al
        outb    %al, $0x11
1:      hlt
