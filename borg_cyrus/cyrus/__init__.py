"""What Cyrus is: imapd.conf, discovery, where files live, the mailbox list, cyrus.header and
cyrus.index, binary-safe database dumps, service control, throwaway servers, the IMAP view."""
