#!/usr/bin/perl
# serve.pl PORT BIND DIR: the web service of the demo release. It serves the files of
# DIR over HTTP/1.0 (GET and HEAD, one request per connection), `/` as index.html.
#
# It ships inside the release, so every host runs the service of the release it serves,
# and it uses Perl's Socket module only (perl-base, on every Debian/Ubuntu machine):
# it starts in a few ms, where python3 -m http.server takes ~140 ms of CPU, which mattered
# with six "hosts" sharing one small machine.
use strict;
use warnings;
use Socket qw(AF_INET SOCK_STREAM SOL_SOCKET SO_REUSEADDR inet_aton pack_sockaddr_in);

my ($port, $bind, $dir) = @ARGV;
die "usage: serve.pl PORT BIND DIR\n" unless defined $dir;
my $addr = inet_aton($bind) or die "serve.pl: bad address $bind\n";
socket(my $server, AF_INET, SOCK_STREAM, 0) or die "serve.pl: socket: $!\n";
setsockopt($server, SOL_SOCKET, SO_REUSEADDR, 1) or die "serve.pl: setsockopt: $!\n";
bind($server, pack_sockaddr_in($port, $addr))
  or die "serve.pl: cannot listen on $bind:$port: $!\n";
listen($server, 64) or die "serve.pl: listen: $!\n";
$| = 1;
print "serving $dir on http://$bind:$port/\n";
$SIG{PIPE} = 'IGNORE';

my %types = (
    html => 'text/html; charset=utf-8',
    css  => 'text/css',
    txt  => 'text/plain; charset=utf-8',
);

sub reply {
    my ($client, $status, $type, $body, $head_only) = @_;
    my $len = length $body;
    print $client "HTTP/1.0 $status\r\nContent-Type: $type\r\n"
      . "Content-Length: $len\r\nConnection: close\r\n\r\n";
    print $client $body unless $head_only;
}

while (1) {
    accept(my $client, $server) or next;
    binmode $client;
    # A client that connects and says nothing must not hold the service.
    eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 5;
        my $request = <$client>;
        if (defined $request) {
            while (my $header = <$client>) {
                last if $header =~ /^\r?\n\z/;
            }
            my ($method, $path) = $request =~ m{^([A-Z]+) (/[^ ?#]*)};
            if (!defined $path) {
                reply($client, '400 Bad Request', $types{txt}, "bad request\n");
            } elsif ($method ne 'GET' && $method ne 'HEAD') {
                reply($client, '405 Method Not Allowed', $types{txt}, "GET or HEAD only\n");
            } else {
                $path .= 'index.html' if $path =~ m{/\z};
                my $file = $dir . $path;
                my ($ext) = $path =~ /\.(\w+)\z/;
                my $fh;
                if ($path =~ m{/\.} || !-f $file || !open($fh, '<:raw', $file)) {
                    reply($client, '404 Not Found', $types{txt}, "not found: $path\n");
                } else {
                    local $/;
                    my $body = <$fh>;
                    close $fh;
                    my $type = $types{ $ext // '' } // 'application/octet-stream';
                    reply($client, '200 OK', $type, $body, $method eq 'HEAD');
                    print "$method $path 200\n";
                }
            }
        }
        alarm 0;
    };
    alarm 0;
    close $client;
}
