# conversions: the guest side of the kernel selftest private_mem_conversions_test, with
# veil as the VMM.
#
# 64-bit mode, one vCPU per chunk of guest memory, entered with:
#   %rdi  the chunk's first guest-physical address
#   %rsi  the vCPU's index (its mailbox is 0x20000 + 64 * index, in shared memory)
#   %rdx  the chunk's size (at least 2 MiB + 4 KiB)
#   %rcx  1 when veil retains the side a conversion stops using, 0 when it discards it
#
# For each (offset, size) of cv_ranges the guest converts the range shared -> private ->
# shared with KVM_HC_MAP_GPA_RANGE (`vmmcall`), punches holes by converting the odd
# pages back to shared one at a time, and checks after every step what it reads:
# private pages read what it wrote privately, shared pages read what the host wrote,
# pages whose side veil discarded read zero, and pages whose side veil retained read
# what that side last held. At sync points it hands over to the
# host (out to port 0x20 with its index, the request in its mailbox):
#   command 1  the host checks that the shared range reads byte `expect` and fills it
#              with byte `new` (argument = expect | new << 8)
#   command 2  the host checks that every page of the range refuses host access
# The host stops the VM if a check fails.
#
# Reports on port 0x10: 0x600d0000 + index when all went well; on a failed check
# 0xbad00000 + step, then the address (low 32 bits), then what was read; halts.

        .code64

        movq    %rdi, %r12                  # chunk base
        movq    %rsi, %r15                  # vCPU index
        movq    %rcx, %rsi                  # 1: retaining, 0: discarding
        movq    %rdx, %r14                  # chunk size
        movq    %r15, %r13
        shlq    $6, %r13
        addq    $0x20000, %r13              # mailbox
        cld

        # Memory is shared by default: fill the chunk, the host checks it and writes
        # the initial pattern 0xcc, which the guest then sees.
        movq    %r12, %rdi
        movq    %r14, %rcx
        movb    $0xaa, %al
        call    cv_fill
        movq    %r12, %rbx
        movq    %r14, %rcx
        movl    $0xccaa, %edx
        call    cv_sync_shared
        movq    %r12, %rdi
        movq    %r14, %rcx
        movb    $0xcc, %al
        movl    $1, %r8d
        call    cv_check

        leaq    cv_ranges(%rip), %rbp
cv_next_range:
        movq    8(%rbp), %r10               # size
        testq   %r10, %r10
        jz      cv_done
        movq    (%rbp), %r9
        addq    %r12, %r9                   # gpa

        # Shared: the guest writes pattern one.
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0x11, %al
        call    cv_fill
        # To private; write and read back pattern two.
        movq    %r9, %rbx
        movq    %r10, %rcx
        movl    $0x10, %edx
        movl    $2, %r8d
        call    cv_map
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0x22, %al
        call    cv_fill
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0x22, %al
        movl    $3, %r8d
        call    cv_check
        # The host cannot touch it, and the rest of the chunk still holds 0xcc.
        movq    %r9, %rbx
        movq    %r10, %rcx
        call    cv_sync_private
        call    cv_check_outside

        # Holes: odd pages back to shared. Their shared side was discarded when the
        # range became private, so they read zero (retained: pattern one) until the
        # host writes pattern three. Even pages stay private and keep pattern two.
        xorq    %r11, %r11
cv_hole:
        testq   $0x1000, %r11
        jz      cv_even
        leaq    (%r9,%r11), %rbx
        movl    $0x1000, %ecx
        xorl    %edx, %edx
        movl    $6, %r8d
        call    cv_map
        leaq    (%r9,%r11), %rdi
        movl    $0x1000, %ecx
        movb    $0x11, %al
        call    cv_if_discarded
        movl    $7, %r8d
        call    cv_check
        movb    $0x11, %al
        call    cv_if_discarded
        movzbl  %al, %edx
        orl     $0x3300, %edx
        leaq    (%r9,%r11), %rbx
        movl    $0x1000, %ecx
        call    cv_sync_shared
        leaq    (%r9,%r11), %rdi
        movl    $0x1000, %ecx
        movb    $0x33, %al
        movl    $8, %r8d
        call    cv_check
        jmp     cv_hole_next
cv_even:
        leaq    (%r9,%r11), %rdi
        movl    $0x1000, %ecx
        movb    $0x22, %al
        movl    $9, %r8d
        call    cv_check
cv_hole_next:
        addq    $0x1000, %r11
        cmpq    %r10, %r11
        jb      cv_hole

        # The whole range back to shared: the even pages read zero (discarded) or
        # pattern one (retained), the odd ones keep the host's pattern three.
        movq    %r9, %rbx
        movq    %r10, %rcx
        xorl    %edx, %edx
        movl    $10, %r8d
        call    cv_map
        xorq    %r11, %r11
cv_after:
        leaq    (%r9,%r11), %rdi
        movl    $0x1000, %ecx
        movb    $0x11, %al
        call    cv_if_discarded
        testq   $0x1000, %r11
        jz      1f
        movb    $0x33, %al
1:      movl    $11, %r8d
        call    cv_check
        addq    $0x1000, %r11
        cmpq    %r10, %r11
        jb      cv_after

        # The first page there and back once more, after the guest writes 0x5a to its
        # shared side. Private, it reads zero (discarded when the range became shared)
        # or pattern two (retained); shared again, zero or 0x5a.
        movq    %r9, %rdi
        movl    $0x1000, %ecx
        movb    $0x5a, %al
        call    cv_fill
        movq    %r9, %rbx
        movl    $0x1000, %ecx
        movl    $0x10, %edx
        movl    $14, %r8d
        call    cv_map
        movq    %r9, %rdi
        movl    $0x1000, %ecx
        movb    $0x22, %al
        call    cv_if_discarded
        movl    $14, %r8d
        call    cv_check
        movq    %r9, %rbx
        movl    $0x1000, %ecx
        xorl    %edx, %edx
        movl    $15, %r8d
        call    cv_map
        movq    %r9, %rdi
        movl    $0x1000, %ecx
        movb    $0x5a, %al
        call    cv_if_discarded
        movl    $15, %r8d
        call    cv_check

        # Shared both ways: the guest writes three, the host checks it and writes four.
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0x33, %al
        call    cv_fill
        movq    %r9, %rbx
        movq    %r10, %rcx
        movl    $0x4433, %edx
        call    cv_sync_shared
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0x44, %al
        movl    $12, %r8d
        call    cv_check

        # Back to the initial pattern; asking for the whole chunk shared changes nothing
        # and still succeeds.
        movq    %r9, %rdi
        movq    %r10, %rcx
        movb    $0xcc, %al
        call    cv_fill
        movq    %r12, %rbx
        movq    %r14, %rcx
        xorl    %edx, %edx
        movl    $13, %r8d
        call    cv_map

        addq    $16, %rbp
        jmp     cv_next_range

cv_done:
        movl    $0x600d0000, %eax
        orl     %r15d, %eax
        outl    %eax, $0x10
        hlt

# %al, what a retained page reads, becomes zero when veil discards.
cv_if_discarded:
        testq   %rsi, %rsi
        jnz     1f
        xorl    %eax, %eax
1:      ret

# rep stosb: fill %rcx bytes at %rdi with %al.
cv_fill:
        rep stosb
        ret

# Checks that %rcx (> 0) bytes at %rdi all equal %al; step %r8d names the failure.
cv_check:
        repe scasb
        jne     1f
        ret
1:      decq    %rdi
        movl    $0xbad00000, %eax
        orl     %r8d, %eax
        outl    %eax, $0x10
        movl    %edi, %eax
        outl    %eax, $0x10
        movzbl  (%rdi), %eax
        outl    %eax, $0x10
        hlt

# The chunk outside [%r9, %r9 + %r10) still holds 0xcc (step 5).
cv_check_outside:
        movq    %r9, %rcx
        subq    %r12, %rcx
        jz      1f
        movq    %r12, %rdi
        movb    $0xcc, %al
        movl    $5, %r8d
        call    cv_check
1:      leaq    (%r9,%r10), %rdi
        movq    %r12, %rcx
        addq    %r14, %rcx
        subq    %rdi, %rcx
        jz      2f
        movb    $0xcc, %al
        movl    $5, %r8d
        call    cv_check
2:      ret

# MAP_GPA_RANGE of %rcx bytes at %rbx with attributes %rdx; any result but 0 fails
# step %r8d (then the result is reported in place of the address).
cv_map:
        pushq   %rcx
        shrq    $12, %rcx
        movq    $12, %rax
        vmmcall
        popq    %rcx
        testq   %rax, %rax
        jnz     1f
        ret
1:      movq    %rax, %rbx
        movl    $0xbad00000, %eax
        orl     %r8d, %eax
        outl    %eax, $0x10
        movl    %ebx, %eax
        outl    %eax, $0x10
        outl    %eax, $0x10
        hlt

# Host check of shared memory: %rbx gpa, %rcx size, %edx = expect | new << 8.
cv_sync_shared:
        movq    $1, (%r13)
        jmp     1f
# Host check that private memory refuses host access: %rbx gpa, %rcx size.
cv_sync_private:
        movq    $2, (%r13)
1:      movq    %rbx, 8(%r13)
        movq    %rcx, 16(%r13)
        movq    %rdx, 24(%r13)
        movl    %r15d, %eax
        outl    %eax, $0x20
        ret

# (offset, size) pairs of private_mem_conversions_test; a size of 0 ends the list.
        .p2align 3
cv_ranges:
        .quad   0, 0x1000
        .quad   0, 0x200000
        .quad   0x1000, 0x1000
        .quad   0x1000, 0x200000
        .quad   0x200000, 0x1000
        .quad   0, 0
